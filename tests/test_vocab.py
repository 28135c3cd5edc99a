"""Vocabulary trimming (pruning.deploy.vocab, compress.py --trim_vocab): on a tiny model with a tiny WordPiece
tokenizer, sentences whose tokens were all seen keep their logits exactly, and unseen tokens become UNK."""
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedTokenizerFast

from conftest import TINY
from pruning import settings
from pruning.deploy import runtimes, vocab

WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "a", "film", "movie", "plot", "is", "was", "good",
         "bad", "dull", "great", "and", "##s", "actor", "story", "not", "very"]
TRAIN = ["the film is good", "the plot was bad and dull", "a very good actor"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer over WORDS ([CLS] x [SEP], lower-cased)."""
    ids = {w: i for i, w in enumerate(WORDS)}
    backend = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("bert", vocab_size=len(WORDS), max_position_embeddings=32, **TINY)
    return AutoModelForSequenceClassification.from_config(config).eval()


def logits(model, tokenizer, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.numpy()


@pytest.fixture(scope="module")
def trimmed():
    import compress
    tokenizer, model = tiny_tokenizer(), tiny_model()
    keep, unk = compress.vocabulary_keep({"input_ids": tokenizer(TRAIN)["input_ids"]}, tokenizer, model)
    import copy
    return tokenizer, model, vocab.trim_vocabulary(copy.deepcopy(model), keep, unk).eval(), keep


def test_kept_ids_are_the_training_tokens_and_the_special_ones(trimmed):
    tokenizer, _, small, keep = trimmed
    seen = {"the", "film", "is", "good", "plot", "was", "bad", "and", "dull", "a", "very", "actor"}
    specials = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    assert [WORDS[i] for i in keep] == [w for w in WORDS if w in seen | specials]
    assert small.get_input_embeddings().weight.shape == (len(keep), TINY["hidden_size"])
    assert small.num_parameters() == tiny_model().num_parameters() - (len(WORDS) - len(keep)) * TINY["hidden_size"]


def test_seen_sentences_keep_their_logits_exactly(trimmed, tmp_path):
    tokenizer, model, small, _ = trimmed
    texts = ["the plot is good", "a very dull film and a bad actor", "good"]  # every token seen in TRAIN
    np.testing.assert_array_equal(logits(small, tokenizer, texts), logits(model, tokenizer, texts))
    # and so does the exported model (the remap table is the graph's first lookup)
    batch = {k: v.numpy() for k, v in tokenizer(texts, padding=True, return_tensors="pt").items()}
    runtimes.export_onnx(small, tmp_path, batch)
    np.testing.assert_allclose(runtimes.runner(tmp_path, 1)(batch), logits(model, tokenizer, texts), atol=1e-5)


def test_unseen_tokens_map_to_unk(trimmed):
    tokenizer, model, small, _ = trimmed
    unk = tokenizer.unk_token_id
    remap = small.get_input_embeddings().remap
    for word in ("movie", "story", "great", "not"):  # in the tokenizer's vocabulary, never in TRAIN
        assert remap[tokenizer.convert_tokens_to_ids(word)] == remap[unk]
    unseen = logits(small, tokenizer, ["the movie is great", "not a good story"])
    as_unk = logits(model, tokenizer, ["the [UNK] is [UNK]", "[UNK] a good [UNK]"])
    np.testing.assert_array_equal(unseen, as_unk)
    assert not np.array_equal(logits(model, tokenizer, ["the movie is great"]), as_unk[:1])  # it did change


def test_bad_trims_are_refused(trimmed):
    import compress
    _, model, _, _ = trimmed
    with pytest.raises(ValueError, match="unknown token"):
        vocab.RemappedEmbedding(model.get_input_embeddings(), np.array([0, 2, 3]), unk_id=1)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        vocab.seen_ids([[0, 5, 99]], [1], vocab_size=len(WORDS))

    class NoUnk:
        unk_token_id = None
    with pytest.raises(settings.ConfigError, match="no unknown token"):
        compress.vocabulary_keep({"input_ids": [[0]]}, NoUnk(), model)
