"""OpenVINO beside ONNX Runtime (pruning.deploy.runtimes): the converted model gives PyTorch's logits, NNCF's int8 and
8/4-bit models load and evaluate in a fresh process, and the word-embedding bytes are found from the graph."""
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForSequenceClassification

from conftest import TINY
from pruning.deploy import runtimes, vocab

VOCAB = 30522


def tiny_model(seed=0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model("bert", vocab_size=VOCAB, max_position_embeddings=64, **TINY)
    return AutoModelForSequenceClassification.from_config(config).eval()


def sentences(n, seed=0, low=1000, high=3000):
    """`n` batches of one random "sentence" each: int64 arrays (1, tokens) by input name."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        ids = np.concatenate([[101], rng.integers(low, high, int(rng.integers(3, 12))), [102]])[None].astype(np.int64)
        out.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return out


def probe_batch():
    ids = np.array([[101, 1000, 2045, 1999, 102, 0], [101, 2001, 1012, 2440, 2000, 102]], dtype=np.int64)
    mask = (np.arange(6)[None] < np.array([[5], [6]])).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def pytorch_logits(model, batch):
    with torch.inference_mode():
        return model(**{k: torch.from_numpy(v) for k, v in batch.items()}).logits.numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny BERT, its fp32 ONNX variant and the OpenVINO conversion of that file."""
    root = tmp_path_factory.mktemp("ov")
    model = tiny_model()
    (root / "fp32").mkdir()
    runtimes.export_onnx(model, root / "fp32", probe_batch())
    (root / "ov-fp32").mkdir()
    runtimes.convert_openvino(root / "fp32", root / "ov-fp32", probe_batch())
    return model, root


def test_openvino_conversion_gives_pytorchs_logits(exported):
    model, root = exported
    batch = sentences(1, seed=5)[0]
    expected = pytorch_logits(model, batch)
    np.testing.assert_allclose(runtimes.runner(root / "ov-fp32", 1)(batch), expected, atol=1e-5)
    np.testing.assert_allclose(runtimes.runner(root / "ov-fp32", 1)(probe_batch()), pytorch_logits(model, probe_batch()),
                               atol=1e-5)  # padded rows too
    assert runtimes.disk_bytes(root / "ov-fp32") == sum((root / "ov-fp32" / f).stat().st_size
                                                       for f in ("model.xml", "model.bin"))


@pytest.mark.slow
def test_openvino_int8_evaluates_in_a_fresh_process(exported, tmp_path):
    model, root = exported
    (tmp_path / "ov-int8").mkdir()
    info = runtimes.quantize_openvino_int8(root / "ov-fp32", tmp_path / "ov-int8", sentences(40))
    assert info["calibration_sentences"] == 40 and info["fake_quantize_ops"] > 0
    dev = sentences(50, seed=9)
    rows = {"input_ids": [d["input_ids"][0].tolist() for d in dev]}
    expected = np.concatenate([pytorch_logits(model, d) for d in dev]).argmax(-1)
    rows["label"] = expected.tolist()  # labels = the fp32 model's own predictions: accuracy = agreement
    runtimes.write_dev(tmp_path / "dev.npz", rows, runtimes.INPUTS, 0, ("accuracy",))
    result = runtimes.evaluate_in_fresh_process(tmp_path / "ov-int8", tmp_path / "dev.npz", 1, 16)
    in_process = np.concatenate([runtimes.runner(tmp_path / "ov-int8", 1)(b)
                                 for b in runtimes.dev_batches(tmp_path / "dev.npz", 16)[0]]).argmax(-1)
    assert result["predictions"] == in_process.tolist()
    assert result["accuracy"] == pytest.approx(float((in_process == expected).mean()))
    assert runtimes.disk_bytes(tmp_path / "ov-int8") < runtimes.disk_bytes(root / "ov-fp32") / 2.5


def test_openvino_weight_compression_puts_a_ratio_at_4_bits(exported, tmp_path):
    model, root = exported
    (tmp_path / "mixed").mkdir()
    info = runtimes.compress_openvino_weights(root / "ov-fp32", tmp_path / "mixed", 1.0, 32)
    assert info["int4_tensors"] > 0
    (tmp_path / "int8w").mkdir()
    eight = runtimes.compress_openvino_weights(root / "ov-fp32", tmp_path / "int8w", 0.0, 32)
    assert eight["int4_tensors"] == 0 and eight["int8_tensors"] > 0
    # the weights (model.bin) shrink; the graph (model.xml) grows by the decompression ops of each matrix
    assert (tmp_path / "mixed" / "model.bin").stat().st_size < (tmp_path / "int8w" / "model.bin").stat().st_size
    batch = probe_batch()
    got, expected = runtimes.runner(tmp_path / "mixed", 1)(batch), pytorch_logits(model, batch)
    assert np.abs(got - expected).max() > 0  # it really is quantized, and still close
    np.testing.assert_allclose(got, expected, atol=0.05)


def test_word_embedding_bytes_are_the_lookup_tables(exported, tmp_path):
    model, root = exported
    table = VOCAB * TINY["hidden_size"] * 4
    assert runtimes.word_embedding_bytes(root / "fp32") == table  # the fp32 table, nothing else
    assert runtimes.word_embedding_bytes(root / "ov-fp32") == table
    (tmp_path / "int8").mkdir()
    runtimes.quantize_int8(root / "fp32", tmp_path / "int8")
    int8 = runtimes.word_embedding_bytes(tmp_path / "int8")
    assert VOCAB * TINY["hidden_size"] <= int8 < table / 3  # int8 codes plus their scales
    keep = np.arange(0, VOCAB, 7)
    keep = np.union1d(keep, [100])
    trimmed = vocab.trim_vocabulary(tiny_model(), keep, unk_id=100).eval()
    (tmp_path / "trim").mkdir()
    runtimes.export_onnx(trimmed, tmp_path / "trim", probe_batch())
    (tmp_path / "ov-trim").mkdir()
    runtimes.convert_openvino(tmp_path / "trim", tmp_path / "ov-trim", probe_batch())
    expected = len(keep) * TINY["hidden_size"] * 4 + VOCAB * 4  # the kept rows and the int32 remap table
    assert runtimes.word_embedding_bytes(tmp_path / "trim") == expected
    assert runtimes.word_embedding_bytes(tmp_path / "ov-trim") == expected


def test_a_file_openvino_cannot_convert_is_one_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / runtimes.ONNX_FILE).write_bytes(b"not an onnx model")
    (tmp_path / "ov").mkdir()
    with pytest.raises(runtimes.DeployError, match="OpenVINO cannot convert"):
        runtimes.convert_openvino(tmp_path / "bad", tmp_path / "ov", probe_batch())
    with pytest.raises(runtimes.DeployError, match="holds no model.xml"):
        runtimes.openvino_compiled(tmp_path / "bad", 1)
