"""Saving and loading BERT/RoBERTa classifiers whose layers keep different numbers of heads and FFN neurons."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)
from transformers.pytorch_utils import prune_linear_layer

REPO = Path(__file__).resolve().parent.parent

TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
        "vocab_size": 100}
KEPT_HEADS = [[0, 2], [1, 2, 3]]
KEPT_NEURONS = [list(range(0, 40, 4)), list(range(64))]
PAD = {"bert": 0, "roberta": 1}


@pytest.fixture(scope="module")
def pruned_model():
    """The module loaded from its file, so the test does not depend on the pruning package's __init__.

    Its name must end in "pruned_model": save_pretrained copies the defining file under its own name and writes
    the module's last name component into auto_map, and the two have to agree.
    """
    spec = importlib.util.spec_from_file_location("pruned_model", REPO / "pruning" / "core" / "pruned_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # save_pretrained finds the file to copy through sys.modules
    spec.loader.exec_module(module)
    return module


def tiny_classifier(kind: str):
    torch.manual_seed(0)
    if kind == "bert":
        return BertForSequenceClassification(BertConfig(**TINY)).eval()
    config = RobertaConfig(**TINY, pad_token_id=PAD["roberta"], max_position_embeddings=40, type_vocab_size=1)
    return RobertaForSequenceClassification(config).eval()


def shrink(model, kept_heads: list[list[int]], kept_neurons: list[list[int]]) -> None:
    """Physically remove heads and FFN neurons, as structured pruning does, leaving the config untouched."""
    for layer, heads, neurons in zip(model.base_model.encoder.layer, kept_heads, kept_neurons):
        attention = layer.attention.self
        size = attention.attention_head_size
        rows = torch.cat([torch.arange(h * size, (h + 1) * size) for h in heads])
        attention.query = prune_linear_layer(attention.query, rows)
        attention.key = prune_linear_layer(attention.key, rows)
        attention.value = prune_linear_layer(attention.value, rows)
        layer.attention.output.dense = prune_linear_layer(layer.attention.output.dense, rows, dim=1)
        neurons = torch.tensor(neurons)
        layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, neurons)
        layer.output.dense = prune_linear_layer(layer.output.dense, neurons, dim=1)


def batch(kind: str) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, TINY["vocab_size"], (3, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row, length in enumerate((12, 7, 4)):
        input_ids[row, length:] = PAD[kind]
        attention_mask[row, length:] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def logits(model, kind: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(kind)).logits


@pytest.fixture(params=["bert", "roberta"])
def saved(request, pruned_model, tmp_path):
    """A shrunk classifier converted with as_pruned_model, and the directory it was saved to."""
    kind = request.param
    model = tiny_classifier(kind)
    shrink(model, KEPT_HEADS, KEPT_NEURONS)
    pruned_model.as_pruned_model(model, kept_heads=KEPT_HEADS)
    model.save_pretrained(tmp_path)
    return kind, model, tmp_path


def test_trust_remote_code_loads_identical_weights_and_logits(saved):
    kind, model, path = saved
    prefix = {"bert": "PrunedBert", "roberta": "PrunedRoberta"}[kind]
    assert (path / "pruned_model.py").is_file()
    assert json.loads((path / "config.json").read_text())["auto_map"] == {
        "AutoConfig": f"pruned_model.{prefix}Config",
        "AutoModelForSequenceClassification": f"pruned_model.{prefix}ForSequenceClassification"}

    loaded, info = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True,
                                                                      output_loading_info=True)
    loaded.eval()
    assert type(loaded).__name__ == f"{prefix}ForSequenceClassification"
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    assert torch.equal(logits(loaded, kind), logits(model, kind))


def test_loading_without_the_remote_code_fails_instead_of_reinitialising(saved):
    kind, _, path = saved
    # The config keeps its family's model type (so AutoTokenizer/AutoConfig read it without custom code):
    # without trust_remote_code the Auto API builds the stock class, which reads the unpruned shapes from the
    # config and refuses the smaller weights, as the stock class itself does.
    stock = {"bert": BertForSequenceClassification, "roberta": RobertaForSequenceClassification}[kind]
    for load in (AutoModelForSequenceClassification.from_pretrained, stock.from_pretrained):
        with pytest.raises(RuntimeError, match="mismatched"):
            load(path)


def test_structure_and_kept_heads_survive_save_and_reload(saved, pruned_model, tmp_path_factory):
    kind, model, path = saved
    structure = {"attention_heads_per_layer": [2, 3], "intermediate_size_per_layer": [10, 64]}
    assert pruned_model.per_layer_structure(model) == structure

    loaded = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True).eval()
    assert pruned_model.per_layer_structure(loaded) == structure
    assert loaded.config.attention_heads_per_layer == structure["attention_heads_per_layer"]
    assert loaded.config.intermediate_size_per_layer == structure["intermediate_size_per_layer"]
    assert loaded.config.kept_heads == KEPT_HEADS
    assert [layer.attention.self.num_attention_heads for layer in loaded.base_model.encoder.layer] == [2, 3]

    # A model loaded through remote code saves again the same way (e.g. after fine-tuning).
    resaved = tmp_path_factory.mktemp("resaved")
    loaded.save_pretrained(resaved)
    reloaded = AutoModelForSequenceClassification.from_pretrained(resaved, trust_remote_code=True).eval()
    assert reloaded.config.kept_heads == KEPT_HEADS
    assert torch.equal(logits(reloaded, kind), logits(model, kind))


def test_plain_model_structure_is_the_config_everywhere(pruned_model):
    structure = pruned_model.per_layer_structure(tiny_classifier("bert"))
    assert structure == {"attention_heads_per_layer": [4, 4], "intermediate_size_per_layer": [64, 64]}


def test_unsupported_model_type_is_refused(pruned_model):
    with pytest.raises(ValueError, match="structured pruning supports these sequence classifiers: "
                                         "BertForSequenceClassification, .*; got BertForMaskedLM"):
        pruned_model.as_pruned_model(BertForMaskedLM(BertConfig(**TINY)))


def test_mismatched_kept_heads_are_refused_before_the_model_changes(pruned_model):
    model = tiny_classifier("bert")
    shrink(model, KEPT_HEADS, KEPT_NEURONS)
    # The config's class validator raises; HF wraps its ValueError in the strict-dataclass error.
    with pytest.raises(StrictDataclassClassValidationError, match="kept_heads"):
        pruned_model.as_pruned_model(model, kept_heads=[[0], [1, 2, 3]])
    assert type(model) is BertForSequenceClassification


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(saved, attn_implementation):
    kind, model, path = saved
    loaded = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True,
                                                                attn_implementation=attn_implementation).eval()
    assert loaded.config._attn_implementation == attn_implementation
    assert loaded.base_model.encoder.layer[0].attention.self.config._attn_implementation == attn_implementation
    # Different kernels: equal up to float rounding, not bitwise.
    torch.testing.assert_close(logits(loaded, kind), logits(model, kind), rtol=1e-5, atol=1e-6)


def test_direct_construction_initialises_the_resized_layers(pruned_model):
    config = pruned_model.PrunedBertConfig(**TINY, attention_heads_per_layer=[2, 3],
                                           intermediate_size_per_layer=[10, 64])
    model = pruned_model.PrunedBertForSequenceClassification(config)
    assert pruned_model.per_layer_structure(model) == {"attention_heads_per_layer": [2, 3],
                                                       "intermediate_size_per_layer": [10, 64]}
    # BERT's own init zeroes Linear biases (torch's default does not), so this shows post_init reached them.
    for layer in model.bert.encoder.layer:
        assert not layer.attention.self.query.bias.any() and not layer.intermediate.dense.bias.any()
