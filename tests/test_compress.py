"""compress.py: every variant exports, loads in a fresh process and predicts what the PyTorch model does;
bits follow the importance; the size accounting adds up; bad input stops before anything is overwritten."""
import json
import shutil
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from conftest import only_run_dir, run_script, tiny_args
from pruning import settings
from pruning.deploy import runtimes
from pruning.deploy.precision import FakeQuant4, assign_bits, matrix_importance
from pruning.run import experiment

STRUCTURED = {"granularity": "heads+neurons", "head_rate": 0.5, "neuron_rate": 0.4}
FAST = ["--rounds=1", "--latency_sentences=2", "--threads=1"]


@pytest.fixture(scope="module")
def one_layer_config(tiny_bert_config, tmp_path_factory):
    """The tiny BERT config with one encoder layer (every compress.py run exports each model to ONNX, which
    takes a second or two per layer)."""
    config = tmp_path_factory.mktemp("config") / "one-layer-bert.json"
    config.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "num_hidden_layers": 1}))
    return config


@pytest.fixture(scope="module")
def runs(one_layer_config, sst2_slice, tmp_path_factory):
    """A finished unstructured run (magnitude, 50%) and a finished heads+neurons run of a one-layer tiny BERT."""
    config = one_layer_config
    out = {}
    for name, extra in (("weights", {}), ("structured", STRUCTURED)):
        target = tmp_path_factory.mktemp(name)
        done = run_script("bert.py", tiny_args(config, sst2_slice, target, **extra))
        assert done.returncode == 0, done.stderr[-2000:]
        out[name] = only_run_dir(target)
    return out


def pytorch_predictions(run_dir, dev_file):
    run = runtimes.runner(run_dir / "model", threads=1)
    batches, _ = runtimes.dev_batches(dev_file, 64)
    return np.concatenate([run(b) for b in batches])


def test_every_variant_loads_fresh_and_predicts_like_pytorch(runs, tmp_path):
    run = runs["weights"]
    out = tmp_path / "compressed"
    done = run_script("compress.py", [str(run), f"--out_dir={out}", "--variants=int8,mixed,sparse,mixed+qat",
                                      "--qat_steps=2", "--four_bit_fraction=0.5", "--runtime=onnxruntime", *FAST])
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "compress.json").read_text())
    variants = record["variants"]
    assert {"pruned · ORT fp32", "pruned · ORT int8", "pruned · ORT mixed", "pruned · ORT fp32+sparse",
            "pruned · ORT int8+sparse", "pruned · ORT mixed+qat"} <= set(variants)

    # The labels each variant predicted in its fresh process, against PyTorch's logits in this one.
    from transformers import AutoTokenizer

    from pruning.data import loading as sst2
    tok = AutoTokenizer.from_pretrained(run / "model")
    dev = sst2.tokenize(sst2.load_sst2(json.loads((run / "results.json").read_text())["data"])[0], tok, 128)
    dev_file = tmp_path / "dev.npz"
    runtimes.write_dev(dev_file, dev["validation"], runtimes.INPUTS, tok.pad_token_id, ("accuracy", "f1"))
    reference = pytorch_predictions(run, dev_file)
    labels = np.asarray(dev["validation"]["label"])
    pytorch = variants["pruned · PyTorch fp32"]
    assert pytorch["accuracy"] == pytest.approx(float((reference.argmax(-1) == labels).mean()))
    for name, tolerance in (("fp32", 0.0), ("fp32+sparse", 0.0), ("int8", 0.1), ("int8+sparse", 0.0),
                            ("mixed", 0.1), ("mixed+qat", 0.15)):
        v = variants[f"pruned · ORT {name}"]
        predicted = np.asarray(v["predictions"])
        base = reference.argmax(-1) if "int8+" not in name else np.asarray(variants["pruned · ORT int8"]["predictions"])
        disagree = float((predicted != base).mean())
        assert disagree <= tolerance, (name, disagree)
        assert v["accuracy"] == pytest.approx(float((predicted == labels).mean()))
    # fp32 logits through ONNX Runtime match PyTorch's, and packing is lossless.
    batches, _ = runtimes.dev_batches(dev_file, 64)
    for name in ("fp32", "fp32+sparse"):
        got = np.concatenate([runtimes.runner(out / name, 1)(b) for b in batches])
        np.testing.assert_allclose(got, reference, atol=1e-4)

    # Size accounting: bytes are the model's files on disk (not the tokenizer, labels and card beside them),
    # compression is relative to the dense fp32 ONNX model.
    dense_bytes = variants["dense · ORT fp32"]["bytes"]
    assert not any("OpenVINO" in name for name in variants)
    for name, v in variants.items():
        if "ORT" in name:
            files = [f for f in Path(v["directory"]).iterdir() if f.name in ("model.onnx", "sparse.safetensors")]
            assert v["bytes"] == sum(f.stat().st_size for f in files)
            assert {"README.md", "tokenizer.json", "deploy.json", "classify.py"} <= {f.name for f in
                                                                                  Path(v["directory"]).iterdir()}
        assert v["compression"] == pytest.approx(dense_bytes / v["bytes"])
        assert v["bits_per_parameter"] == pytest.approx(8 * v["bytes"] / v["parameters"])
    assert variants["pruned · ORT int8"]["bytes"] < variants["pruned · ORT fp32"]["bytes"] / 3
    assert variants["pruned · ORT mixed"]["bytes"] < variants["pruned · ORT int8"]["bytes"]
    mixed = record["mixed"]
    assert mixed["importance"] == "magnitude" and mixed["four_bit_fraction"] >= 0.5
    four = list(mixed["bits"].values()).count(4)
    assert 1 <= four < len(mixed["bits"])
    ops = [n.op_type for n in onnx.load(str(out / "mixed" / runtimes.ONNX_FILE)).graph.node]
    assert ops.count("MatMulNBits") == four and ops.count("GatherBlockQuantized") == 3  # word, position, type
    for f in ("table.md", "accuracy_vs_bytes.png", "accuracy_vs_speed.png"):
        assert (out / f).stat().st_size > 0
    assert not (out / ".work").exists() and not list(out.glob(".*tmp"))


def test_structured_run_compresses_in_both_runtimes_and_skips_sparse(runs, tmp_path):
    out = tmp_path / "c"
    done = run_script("compress.py", [str(runs["structured"]), f"--out_dir={out}", "--variants=int8,sparse",
                                      "--trim_vocab=true", "--calibration_sentences=40", *FAST])
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sparse: skipped" in done.stdout
    record = json.loads((out / "compress.json").read_text())
    variants = record["variants"]
    assert not any("sparse" in v for v in variants)
    pruned, dense = variants["pruned · ORT fp32"], variants["dense · ORT fp32"]
    assert pruned["parameters"] < dense["parameters"] and pruned["bytes"] < dense["bytes"]
    assert pruned["accuracy"] == variants["pruned · PyTorch fp32"]["accuracy"]
    assert pruned["predictions"] == variants["pruned · PyTorch fp32"]["predictions"]
    # OpenVINO beside ONNX Runtime: the same model's predictions in fp32; int8 evaluated in its own process
    assert variants["pruned · OpenVINO fp32"]["predictions"] == pruned["predictions"]
    assert variants["pruned · OpenVINO int8"]["accuracy"] is not None
    assert record["openvino_int8"]["calibration_sentences"] == 40
    # the rows a user would deploy instead: the dense model in each runtime at fp32 and int8
    for row in ("dense · ORT fp32", "dense · ORT int8", "dense · OpenVINO fp32", "dense · OpenVINO int8"):
        assert variants[row]["sentences_per_s"] > 0
    fastest = record["fastest_dense"]
    assert variants[fastest]["sentences_per_s"] == max(v["sentences_per_s"] for v in variants.values()
                                                       if v["model"] == "dense")
    for v in variants.values():
        assert v["vs_fastest_dense"] == pytest.approx(v["sentences_per_s"] / variants[fastest]["sentences_per_s"])
        assert 0 < v["word_embedding_bytes"] < v["bytes"]
        assert v["bytes_without_word_embeddings"] == v["bytes"] - v["word_embedding_bytes"]
    # --runtime=auto: each precision measured in both runtimes names the faster, and only that one is marked
    choice = record["runtime_choice"]
    assert set(choice) == {"dense fp32", "dense int8", "pruned fp32", "pruned int8", "pruned fp32+trim",
                           "pruned int8+trim"}
    for c in choice.values():
        assert c["runtime"] == max(c["sentences_per_s"], key=c["sentences_per_s"].get)
        assert variants[c["label"]]["chosen"] and variants[c["label"]]["runtime"] == c["runtime"]
    assert sum(bool(v.get("chosen")) for v in variants.values()) == len(choice)
    # the trimmed vocabulary: fewer embedding bytes, its dev accuracy reported beside the untrimmed one
    trimmed = variants["pruned · ORT fp32+trim"]
    assert trimmed["word_embedding_bytes"] < pruned["word_embedding_bytes"] / 2 and trimmed["accuracy"] is not None
    assert record["trim_vocab"]["kept_tokens"] < record["trim_vocab"]["vocabulary"]
    # energy: a figure per row where the machine has a counter, the table says so where it has none
    table = (out / "table.md").read_text()
    from pruning.deploy import energy
    if energy.find_counter()[0] is None:
        assert "no energy counter" in table and all(v["joules_per_1000"] is None for v in variants.values())
    else:
        assert all(v["joules_per_1000"] > 0 for v in variants.values())
    # every variant directory is an artifact with a model card naming what it measured
    card = (out / "ov-int8" / "README.md").read_text()
    assert f"{variants['pruned · OpenVINO int8']['accuracy']:.4f}" in card and "compress.py" in card
    assert "NNCF post-training quantization" in card


@pytest.fixture(scope="module")
def activation_run(one_layer_config, sst2_slice, tmp_path_factory):
    """A finished unstructured run of the activation criterion (Wanda's |w| * ||x||) on the one-layer tiny BERT."""
    target = tmp_path_factory.mktemp("activation")
    done = run_script("bert.py", tiny_args(one_layer_config, sst2_slice, target, trainer="activation"))
    assert done.returncode == 0, done.stderr[-2000:]
    return only_run_dir(target)


def test_an_activation_run_compresses_with_the_default_variants(activation_run, tmp_path):
    """Issue 34, case 4: the mixed variant ranked the matrices with the activation criterion in eval mode, whose
    hooks count training-mode forwards only, and scores() raised after four variants were written."""
    out = tmp_path / "c"
    done = run_script("compress.py", [str(activation_run), f"--out_dir={out}", "--runtime=onnxruntime", *FAST])
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "compress.json").read_text())
    assert {"pruned · ORT int8", "pruned · ORT mixed", "pruned · ORT fp32+sparse",
            "pruned · ORT int8+sparse"} <= set(record["variants"])
    mixed = record["mixed"]
    assert mixed["importance"] == "activation" and mixed["calibration_batches"] == 8
    assert all(v > 0 for v in mixed["matrix_importance"].values())
    four = list(mixed["bits"].values()).count(4)
    ops = [n.op_type for n in onnx.load(str(out / "mixed" / runtimes.ONNX_FILE)).graph.node]
    assert ops.count("MatMulNBits") == four >= 1


def test_a_refusal_midway_leaves_the_output_directory_as_it_was(runs, tmp_path, monkeypatch):
    """Whatever refuses after the settings check leaves nothing half-written: a criterion that cannot score
    stops before anything is written (OUT_DIR is not even made), and a step that fails after some variants
    were made (here the mixed quantizer, after fp32 and int8 of both models) leaves an earlier OUT_DIR as
    it was, its variants and compress.json untouched and no work directory behind."""
    import compress
    args = [f"--run={runs['weights']}", "--variants=int8,mixed", "--runtime=onnxruntime", *FAST]

    def cannot_score(*_, **__):
        raise RuntimeError("activation scores need at least one counted training step")

    def refuse(*_, **__):
        raise runtimes.DeployError("refused")

    fresh = tmp_path / "fresh"
    with monkeypatch.context() as m:
        m.setattr(compress, "matrix_importance", cannot_score)
        with pytest.raises(RuntimeError, match="counted training step"):
            compress.main(experiment.configure(vars(compress), [*args, f"--out_dir={fresh}"]))
    assert not fresh.exists()

    earlier = tmp_path / "earlier"
    (earlier / "int8").mkdir(parents=True)
    (earlier / "int8" / "model.onnx").write_text("the earlier int8 model")
    (earlier / "compress.json").write_text("{}")
    before = {str(f.relative_to(earlier)): f.read_text() for f in earlier.rglob("*") if f.is_file()}
    with monkeypatch.context() as m:
        m.setattr(runtimes, "quantize_mixed", refuse)
        with pytest.raises(runtimes.DeployError, match="refused"):
            compress.main(experiment.configure(vars(compress), [*args, f"--out_dir={earlier}"]))
    assert {str(f.relative_to(earlier)): f.read_text() for f in earlier.rglob("*") if f.is_file()} == before
    assert sorted(p.name for p in earlier.iterdir()) == ["compress.json", "int8"]


def test_block_size_is_checked_against_what_onnx_runtime_takes(runs, tmp_path):
    """Issue 34, case 8: --block_size=512 passed a power-of-two check, three kinds of variant were written, then
    ONNX Runtime refused it with a traceback. The sizes are asked of ONNX Runtime itself, and only where a
    4-bit ONNX Runtime variant will be made (NNCF, for OpenVINO's mixed, takes any group of >= 1 columns)."""
    import onnxruntime

    import compress

    def check(*args):
        return compress.check(experiment.configure(vars(compress), [f"--run={runs['weights']}", *args]))
    taken = runtimes.four_bit_block_sizes()
    assert 512 not in taken and {16, 32, 256} <= set(taken)
    message = (f"--block_size=512: ONNX Runtime {onnxruntime.__version__}'s 4-bit quantizer takes blocks of "
               f"{', '.join(map(str, taken))} input columns; choose one of those")
    with pytest.raises(settings.ConfigError, match=re.escape(message)):
        check("--block_size=512")  # the default variants: mixed in both runtimes
    with pytest.raises(settings.ConfigError, match=re.escape(message)):
        check("--block_size=512", "--variants=mixed+qat", "--qat_steps=2", "--runtime=onnxruntime")
    check("--block_size=512", "--runtime=openvino")  # NNCF's groups: any size, smaller where a width needs it
    check("--block_size=512", "--variants=int8")  # no 4-bit variant: the size is not used
    check("--block_size=256")
    out = tmp_path / "out"
    done = run_script("compress.py", [str(runs["weights"]), "--block_size=512", f"--out_dir={out}"])
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [f"error: {message} (or --runtime=openvino, or leave mixed and "
                                                "mixed+qat out of --variants)"]
    assert not out.exists() and not (runs["weights"] / "compressed").exists()


@pytest.mark.parametrize("args, message", [
    (["--variants=int4"], "unknown variant"),
    (["--variants=mixed+qat"], "needs --qat_steps"),
    (["--embedding_bits=2"], "must be 4 or 8"),
    (["--block_size=24"], "--block_size=24: ONNX Runtime"),
    (["--block_size=0", "--runtime=openvino"], "--block_size=0: must be at least 1"),
    (["--importance=slimming"], "--importance=slimming"),
    (["--dense=RUN"], "must be a dense run"),
    (["--runtime=tensorrt"], "--runtime=tensorrt: choose one of auto, onnxruntime, openvino, both"),
    (["--calibration_sentences=0"], "--calibration_sentences=0"),
])
def test_bad_settings_are_named_before_any_work(runs, args, message):
    import compress
    args = [a.replace("RUN", str(runs["structured"])) for a in args]
    with pytest.raises(settings.ConfigError, match=re.escape(message)):
        compress.check(experiment.configure(vars(compress), [f"--run={runs['weights']}", *args]))


def test_a_run_started_from_a_dense_runs_model_takes_that_run_as_its_dense_reference(runs, tmp_path):
    """A heads+neurons run whose MODEL was a fine-tuned dense run's model/ (speed_prune.py's recipe): that dense run is
    its reference; a dense run of anything else is still refused."""
    import compress
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    shutil.copytree(runs["weights"], dense)
    raw = json.loads((dense / "results.json").read_text())
    (dense / "results.json").write_text(json.dumps({**raw, "trainer": "dense"}))
    shutil.copytree(runs["structured"], pruned)
    raw = json.loads((pruned / "results.json").read_text())
    (pruned / "results.json").write_text(json.dumps({**raw, "model_source": str(dense / "model")}))
    compress.check(experiment.configure(vars(compress), [f"--run={pruned}", f"--dense={dense}"]))
    (pruned / "results.json").write_text(json.dumps({**raw, "model_source": str(tmp_path / "elsewhere" / "model")}))
    with pytest.raises(settings.ConfigError, match="or the dense run whose model/ this run started from"):
        compress.check(experiment.configure(vars(compress), [f"--run={pruned}", f"--dense={dense}"]))


def test_unfinished_run_gets_one_clear_message(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    done = run_script("compress.py", [str(tmp_path / "run")])
    assert done.returncode == 2 and "not a finished run" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "run" / "compressed").exists()
    done = run_script("compress.py", [])
    assert done.returncode == 2 and "name the run" in done.stderr


def test_a_results_file_of_a_newer_schema_version_is_refused_naming_it(tmp_path):
    import compress
    from pruning.run import schema
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "model" / "config.json").write_text("{}")
    (tmp_path / "run" / "results.json").write_text(json.dumps({"schema_version": schema.SCHEMA_VERSION + 1}))
    with pytest.raises(settings.ConfigError, match=re.escape(
            f"--run: {tmp_path / 'run' / 'results.json'}: schema_version {schema.SCHEMA_VERSION + 1} is newer")):
        compress.check(experiment.configure(vars(compress), [f"--run={tmp_path / 'run'}"]))


def test_a_failed_write_leaves_the_previous_variant_whole(tmp_path):
    final = tmp_path / "int8"
    final.mkdir()
    (final / "model.onnx").write_text("previous")
    tmp = runtimes.fresh_tmp(final)
    (tmp / "model.onnx").write_text("half-writ")  # the write fails here: no replace_directory
    assert (final / "model.onnx").read_text() == "previous"
    tmp = runtimes.fresh_tmp(final)  # a retry starts from an empty staging directory
    assert not list(tmp.iterdir())
    (tmp / "model.onnx").write_text("new")
    runtimes.replace_directory(tmp, final)
    assert (final / "model.onnx").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["int8"]


def test_bits_follow_importance():
    importance = {"a": 3.0, "b": 1.0, "c": 2.0, "d": 1.0}
    sizes = {"a": 100, "b": 100, "c": 200, "d": 100}
    # least important first (ties by name): b, d, then c reaches 400 >= 0.5 * 500
    assert assign_bits(importance, sizes, 0.5) == {"b": 4, "d": 4, "c": 4, "a": 8}
    assert assign_bits(importance, sizes, 0.3) == {"b": 4, "d": 4, "c": 8, "a": 8}
    assert set(assign_bits(importance, sizes, 0.0).values()) == {8}
    assert set(assign_bits(importance, sizes, 1.0).values()) == {4}
    with pytest.raises(ValueError):
        assign_bits(importance, sizes, 1.5)


def test_matrix_importance_is_the_mean_score_of_live_weights(tiny_bert_config):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from magnitude_pruning import MagnitudeCriterion
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert_config))
    query = model.bert.encoder.layer[0].attention.self.query
    with torch.no_grad():
        query.weight.fill_(0)
        query.weight[0, :4] = torch.tensor([1.0, -2.0, 3.0, -6.0])
    importance = matrix_importance(model, MagnitudeCriterion)
    assert importance["bert.encoder.layer.0.attention.self.query"] == pytest.approx(3.0)  # zeros do not count
    assert len(importance) == 12


def tiny_classifier_and_batches(tiny_bert_config):
    """A tiny two-layer BERT in eval mode (12 prunable matrices) and two padded training batches with labels."""
    from transformers import AutoConfig, AutoModelForSequenceClassification
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(tiny_bert_config)).eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(2):
        ids = torch.randint(1000, 3000, (4, 9), generator=g)
        mask = torch.ones_like(ids)
        mask[1, 6:] = 0
        batches.append({"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1, 0])})
    return model, batches


@pytest.mark.parametrize("name", ["magnitude", "gradient", "undecayed", "activation"])
def test_matrix_importance_works_for_every_criterion_and_leaves_the_model_as_it_was(tiny_bert_config, name):
    """Every criterion that scores single weights ranks the matrices for mixed precision; one that ranks what it
    observed (gradient, undecayed, activation) from the calibration batches, reproducibly, without leaving
    hooks, gradients, another mode or a moved random state behind."""
    import compress
    criterion = compress.criteria()[name]
    model, batches = tiny_classifier_and_batches(tiny_bert_config)
    batches = batches if criterion.observes else ()
    rng = torch.get_rng_state()
    importance = matrix_importance(model, criterion, {}, batches)
    assert len(importance) == 12 and all(np.isfinite(v) and v > 0 for v in importance.values())
    assert matrix_importance(model, criterion, {}, batches) == importance
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())
    assert torch.equal(torch.get_rng_state(), rng)
    if criterion.observes:
        with pytest.raises(ValueError, match="it needs batches"):
            matrix_importance(model, criterion, {}, ())


def test_activation_importance_is_wandas_score_over_the_calibration_forwards(tiny_bert_config):
    """The activation criterion counts training-mode forwards only (a run's search steps): the calibration
    batches run as those steps did, dropout drawn from the seed, and a matrix scores the mean over its
    weights of |w| * RMS over real tokens of the input feature it multiplies (Wanda)."""
    from activation_pruning import ActivationCriterion
    model, batches = tiny_classifier_and_batches(tiny_bert_config)
    importance = matrix_importance(model, ActivationCriterion, {}, batches, seed=3)
    query = model.bert.encoder.layer[1].attention.self.query
    squares, tokens, current = torch.zeros(query.in_features, dtype=torch.float64), 0.0, {}

    def count(module, args):
        real = current["mask"].reshape(-1).double()
        squares.add_(real @ args[0].reshape(-1, query.in_features).double().square())
    handle = query.register_forward_pre_hook(count)
    model.train()
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(3)
        for batch in batches:
            current["mask"] = batch["attention_mask"]
            tokens += float(batch["attention_mask"].sum())
            model(**batch)
    handle.remove()
    model.eval()
    expected = float((query.weight.detach().abs() * (squares / tokens).sqrt().float()).mean())
    assert importance["bert.encoder.layer.1.attention.self.query"] == pytest.approx(expected, rel=1e-5)


def one_matmul_model(weight: np.ndarray) -> onnx.ModelProto:
    k, n = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, k])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, n])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_sparse_packing_is_lossless_and_counts_its_index_cost(tmp_path):
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((96, 64)).astype(np.float32)
    weight[rng.random(weight.shape) < 0.6] = 0
    (tmp_path / "dense").mkdir()
    onnx.save(one_matmul_model(weight), str(tmp_path / "dense" / runtimes.ONNX_FILE))
    (tmp_path / "sparse").mkdir()
    stats = runtimes.pack_sparse(tmp_path / "dense", tmp_path / "sparse", min_elements=16)
    nonzero = int((weight != 0).sum())
    assert stats == {"tensors": 1, "dense_bytes": weight.nbytes, "packed_bytes": weight.size // 8 + 4 * nonzero}
    x = rng.standard_normal((5, 96)).astype(np.float32)
    dense = runtimes.session(tmp_path / "dense", 1).run(None, {"x": x})[0]
    packed = runtimes.session(tmp_path / "sparse", 1).run(None, {"x": x})[0]
    np.testing.assert_array_equal(dense, packed)
    assert runtimes.directory_bytes(tmp_path / "sparse") < runtimes.directory_bytes(tmp_path / "dense")


def test_mixed_quantizes_exactly_the_named_nodes_at_their_width(tmp_path):
    """ONNX Runtime's 4-bit quantizer takes every MatMul unless told otherwise: only "a" may become 4-bit."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wa"], ["h"], name="a"),
         helper.make_node("MatMul", ["h", "wb"], ["y"], name="b"),
         helper.make_node("MatMul", ["y", "wc"], ["logits"], name="c")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 64])],
        [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), n) for n in ("wa", "wb", "wc")])
    (tmp_path / "fp32").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "fp32" / runtimes.ONNX_FILE))
    (tmp_path / "mixed").mkdir()
    runtimes.quantize_mixed(tmp_path / "fp32", tmp_path / "mixed", four_bit=["a"], eight_bit=["b"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "mixed" / runtimes.ONNX_FILE)).graph.node]
    assert ops.count("MatMulNBits") == 1 and ops.count("MatMul") == 1  # c stays fp32
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    with pytest.raises(runtimes.DeployError, match="no MatMul or Gather node"):
        runtimes.quantize_mixed(tmp_path / "fp32", tmp_path / "mixed", four_bit=["nope"], eight_bit=[])


def test_mixed_quantizes_a_gemm_named_for_int8(tmp_path):
    """A Linear on 2-D input (BERT's pooler and classifier) exports as Gemm; ONNX Runtime's int8 quantizer rewrites
    a Gemm as MatMul + Add under new names and then leaves it fp32 (onnxruntime 1.32): it must come out int8."""
    rng = np.random.default_rng(3)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "wa"], ["h"], name="a"),
         helper.make_node("Gemm", ["h", "wcls", "bcls"], ["logits"], name="cls", transB=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 32])],
        [numpy_helper.from_array(rng.standard_normal((64, 64)).astype(np.float32), "wa"),
         numpy_helper.from_array(rng.standard_normal((32, 64)).astype(np.float32), "wcls"),
         numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "bcls")])
    (tmp_path / "fp32").mkdir()
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              str(tmp_path / "fp32" / runtimes.ONNX_FILE))
    (tmp_path / "mixed").mkdir()
    runtimes.quantize_mixed(tmp_path / "fp32", tmp_path / "mixed", four_bit=["a"], eight_bit=["cls"])
    result = onnx.load(str(tmp_path / "mixed" / runtimes.ONNX_FILE))
    assert not [n.name for n in result.graph.node if n.op_type in ("MatMul", "Gemm")]  # nothing left in fp32
    floats = [i.name for i in result.graph.initializer if i.data_type == TensorProto.FLOAT and i.dims == [32, 64]
              or i.dims == [64, 32] and i.data_type == TensorProto.FLOAT]
    assert floats == []
    x = rng.standard_normal((3, 64)).astype(np.float32)
    full = runtimes.session(tmp_path / "fp32", 1).run(None, {"x": x})[0]
    mixed = runtimes.session(tmp_path / "mixed", 1).run(None, {"x": x})[0]
    assert np.abs(mixed - full).max() < 0.1 * np.abs(full).max()  # the same function, quantized


def test_fake_quantization_uses_onnx_runtimes_4_bit_grid(tmp_path):
    """QAT trains against the rounding ONNX Runtime then applies: the same weights come out of both."""
    rng = np.random.default_rng(1)
    weight = (rng.standard_normal((64, 24)) * rng.uniform(0.1, 2, (1, 24))).astype(np.float32)  # (in, out)
    (tmp_path / "fp32").mkdir()
    onnx.save(one_matmul_model(weight), str(tmp_path / "fp32" / runtimes.ONNX_FILE))
    (tmp_path / "q4").mkdir()
    runtimes.quantize_mixed(tmp_path / "fp32", tmp_path / "q4", four_bit=["mm"], eight_bit=[], block_size=32)
    assert "MatMulNBits" in {n.op_type for n in onnx.load(str(tmp_path / "q4" / runtimes.ONNX_FILE)).graph.node}
    dequantized = runtimes.session(tmp_path / "q4", 1).run(None, {"x": np.eye(64, dtype=np.float32)})[0]
    fake = FakeQuant4(32)(torch.from_numpy(weight.T.copy())).detach().numpy().T  # a Linear's (out, in) layout
    assert np.abs(dequantized - weight).max() > 1e-3  # it really is quantized
    np.testing.assert_allclose(dequantized, fake, atol=1e-5)
    w = torch.from_numpy(weight.T.copy()).requires_grad_()
    FakeQuant4(32)(w).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # straight-through


def test_export_failure_is_one_clear_error(tmp_path):
    class Unexportable(nn.Module):
        def forward(self, input_ids, attention_mask):
            raise RuntimeError("no graph here")
    with pytest.raises(runtimes.DeployError, match="cannot export Unexportable"):
        runtimes.export_onnx(Unexportable(), tmp_path, {"input_ids": np.ones((2, 3), dtype=np.int64),
                                                      "attention_mask": np.ones((2, 3), dtype=np.int64)})


def test_the_block_size_probe_says_what_the_4_bit_quantizer_does(tmp_path):
    """`four_bit_block_size_taken` asks ONNX Runtime on a small graph; a real model's 4-bit quantization agrees."""
    rng = np.random.default_rng(3)
    (tmp_path / "fp32").mkdir()
    onnx.save(one_matmul_model(rng.standard_normal((512, 8)).astype(np.float32)),
              str(tmp_path / "fp32" / runtimes.ONNX_FILE))
    for size in (8, 16, 256, 512):
        (tmp_path / str(size)).mkdir()
        try:
            runtimes.quantize_mixed(tmp_path / "fp32", tmp_path / str(size), four_bit=["mm"], eight_bit=[],
                                  block_size=size)
            made = True
        except Exception:
            made = False
        assert runtimes.four_bit_block_size_taken(size) == made == (size in (16, 256)), size
