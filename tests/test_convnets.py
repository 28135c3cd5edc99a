"""Channel early-bird pruning of CNNs (resnet.py): Torch-Pruning's groups on HF ResNet (basic, bottleneck) and
MobileNetV2, removal equals masking, the slimming penalty, the detector on channel masks, save/load in a fresh
process, kill and resume, the image data layouts read strictly, compress.py on a pruned CNN and on a pruned MLP (the
dense run's deployments beside it with --dense, mixed 8/4-bit precision, the refusals), a CNN ticket rewound to its
early-bird weights, and lottery.py on channel scripts (an mlp.py study end to end, the to_fraction refusal)."""
import copy
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from pruning.convnets import data as data_io
from pruning.convnets.criteria import CHANNEL_CRITERIA, MagnitudeChannels, SlimmingChannels
from pruning.convnets.models import TabularMLP, build_image_model, load_model, save_model
from pruning.convnets.units import ChannelUnits, mask_by_zeros, remove_channels
from pruning.core.masks import select

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def tiny(name):
    torch.manual_seed(0)
    if name == "basic":
        model = build_image_model("resnet18", 4, 3, "cifar", width=1 / 16)
    elif name == "bottleneck":
        model = build_image_model("resnet50", 4, 3, "cifar", width=1 / 32)
    elif name == "inverted_residual":
        model = build_image_model("mobilenet_v2", 4, 3, "cifar", width=0.25)
    else:
        return TabularMLP(6, [16, 8, 4], 3), {"features": torch.randn(5, 6)}
    for m in model.modules():  # BatchNorm statistics and affine terms away from their init, so zeros matter
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model, {"pixel_values": torch.randn(3, 3, 16, 16)}


@pytest.mark.parametrize("name", ["basic", "bottleneck", "inverted_residual", "mlp"])
def test_removal_equals_masking(name):
    model, x = tiny(name)
    model.eval()
    units = ChannelUnits(model, x)
    if name in ("basic", "bottleneck"):  # a residual stream couples the shortcut's BatchNorm with the blocks'
        assert any(len(g.norms) > 1 for g in units.groups.values())
    if name == "inverted_residual":  # a depthwise conv couples its input and output channels
        assert any(any(m.module.groups > 1 for m in g.producers) for g in units.groups.values())
    torch.manual_seed(1)
    masks = select({n: torch.rand(g.size) for n, g in units.groups.items()}, 0.5, "global", min_keep=1,
                   layers=units.layers())
    masked = copy.deepcopy(model)
    mask_by_zeros(ChannelUnits(masked, x), masks)
    before = sum(p.numel() for p in model.parameters())
    removed = remove_channels(units, masks)
    assert sum(removed.values()) == sum(int((~m).sum()) for m in masks.values())
    assert sum(p.numel() for p in model.parameters()) < before
    out = model(**x)
    ref = masked(**x)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-5, rtol=1e-5)


def test_slimming_penalty_gradient():
    model, x = tiny("basic")
    units = ChannelUnits(model, x)
    criterion = SlimmingChannels(units, l1=0.01)
    model.train()
    model(**x, labels=torch.tensor([0, 1, 2])).loss.backward()
    before = {id(w): w.grad.clone() for w in criterion.scales}
    criterion.on_gradients()
    for w in criterion.scales:
        torch.testing.assert_close(w.grad, before[id(w)] + 0.01 * torch.sign(w.detach()))
    scores = criterion.scores()
    g = next(iter(units.groups.values()))
    torch.testing.assert_close(scores[g.name], sum(m.module.weight.detach().abs()[m.idxs] for m in g.norms) / len(g.norms))


def test_every_criterion_scores_every_group():
    model, x = tiny("inverted_residual")
    units = ChannelUnits(model, x)
    for name, cls in CHANNEL_CRITERIA.items():
        c = cls(units)
        model.train()
        model(**x, labels=torch.tensor([0, 1, 2])).loss.backward()
        c.on_gradients()
        c.observe()
        scores = c.scores()
        assert set(scores) == set(units.groups)
        assert all(scores[n].shape == (g.size,) and torch.isfinite(scores[n]).all() for n, g in units.groups.items())
        c.close()
        model.zero_grad()


def test_detector_on_channel_masks(tmp_path):
    """With a learning rate of 0 the magnitude mask never moves: the early bird is found exactly when the FIFO
    of 5 masks is full, at the 5th check after the warm-up, and the search stops there."""
    from transformers import TrainingArguments
    from pruning.convnets.trainer import ChannelSearchTrainer
    model, x = tiny("mlp")
    units = ChannelUnits(model, x)
    data = data_io.TabularSet(np.random.RandomState(0).randn(64, 6), np.arange(64) % 3)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=10, per_device_train_batch_size=8,
                             learning_rate=0.0, report_to=[], save_strategy="no", use_cpu=True, disable_tqdm=True)
    trainer = ChannelSearchTrainer(model=model, args=args, train_dataset=data, units=units,
                                   criterion=MagnitudeChannels(units), rate=0.5, scope="layerwise", check_every=3,
                                   window=5, epsilon=0.1, first_check=4)
    trainer.train()
    assert trainer.eb_step == 4 + 4 * 3
    assert trainer.state.global_step == trainer.eb_step
    assert [h["step"] for h in trainer.detector.history] == [4, 7, 10, 13, 16]
    assert trainer.detector.history[-1]["max_distance"] == 0
    assert all(int(m.sum()) == g.size - round(0.5 * g.size) for m, g in zip(trainer.last_masks.values(),
                                                                              units.groups.values()))


def test_save_and_load_in_a_fresh_process(tmp_path):
    model, x = tiny("bottleneck")
    units = ChannelUnits(model, x)
    masks = select({n: torch.rand(g.size) for n, g in units.groups.items()}, 0.7, "global", min_keep=1,
                   layers=units.layers())
    remove_channels(units, masks)
    save_model(model, str(tmp_path / "model"))
    torch.save(x["pixel_values"], tmp_path / "x.pt")
    expected = model.eval()(**x).logits
    code = ("import sys, torch; sys.path.insert(0, sys.argv[3]); from pruning.convnets.models import load_model; "
            "m = load_model(sys.argv[1]); torch.save(m(pixel_values=torch.load(sys.argv[2])).logits, sys.argv[1] + '/out.pt')")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "model"), str(tmp_path / "x.pt"), str(REPO)], check=True)
    torch.testing.assert_close(torch.load(tmp_path / "model" / "out.pt"), expected)


# --- data layouts ---------------------------------------------------------------------------------------
def write_cifar(root, n=4, bad=None):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.RandomState(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"batch_label": name.encode(), b"data": rng.randint(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.randint(0, 10, n)], b"filenames": [b"x.png"] * n}
        if bad and bad[0] == name:
            bad[1](d)
        with open(root / name, "wb") as f:
            pickle.dump(d, f)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)
    return root


def test_cifar_batches_layout(tmp_path):
    root = write_cifar(tmp_path / "cifar-10-batches-py")
    d = data_io.load_images("cifar10", str(tmp_path), 32, 0)   # the parent folder works too
    assert (len(d.train), len(d.dev), d.channels, d.label_names[0]) == (20, 4, 3, "c0")
    item = d.train[0]
    assert item["pixel_values"].shape == (3, 32, 32) and 0 <= item["labels"] < 10
    d.train.epoch = 1   # augmentation: a draw per (seed, epoch, index), the same every time it is asked
    torch.testing.assert_close(d.train[2]["pixel_values"], d.train[2]["pixel_values"])
    assert torch.equal(d.dev[0]["pixel_values"], data_io.load_images("cifar10", str(root), 32, 0).dev[0]["pixel_values"])


@pytest.mark.parametrize("case, message", [
    (("data_batch_3", lambda d: d[b"labels"].__setitem__(2, 10)), "data_batch_3, row 2: label 10"),
    (("test_batch", lambda d: d.__setitem__(b"data", d[b"data"].astype(np.float32))), "test_batch: b'data' must be uint8"),
    (("data_batch_1", lambda d: d.pop(b"labels")), "data_batch_1: a CIFAR-10 batch is a dict"),
    (("data_batch_2", lambda d: d.__setitem__(b"data", d[b"data"][:, :100])), "data_batch_2: b'data' must be uint8 of shape"),
])
def test_cifar_bad_files(tmp_path, case, message):
    root = write_cifar(tmp_path / "c", bad=case)
    with pytest.raises(data_io.DataError, match=message.replace("(", r"\(")):
        data_io.load_images("cifar10", str(root), 32, 0)


def test_cifar_missing_file(tmp_path):
    root = write_cifar(tmp_path / "c")
    (root / "data_batch_4").unlink()
    with pytest.raises(data_io.DataError, match="data_batch_4: missing"):
        data_io.load_images("cifar10", str(root), 32, 0)


def write_folder(root, bad_file=False, extra_val_class=False):
    for split, n in (("train", 3), ("val", 2)):
        for c in ("cat", "dog"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.random.RandomState(i).randint(0, 256, (40, 30, 3)).astype(np.uint8)).save(
                    root / split / c / f"{i}.jpg")
    if bad_file:
        (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    if extra_val_class:
        (root / "val" / "emu").mkdir()
        Image.new("RGB", (8, 8)).save(root / "val" / "emu" / "0.png")
    return root


def test_image_folder_layout(tmp_path):
    d = data_io.load_images("imagefolder", str(write_folder(tmp_path / "f")), 24, 0)
    assert d.label_names == ["cat", "dog"] and (len(d.train), len(d.dev)) == (6, 4)
    assert d.train[0]["pixel_values"].shape == (3, 24, 24) and d.dev[3]["pixel_values"].shape == (3, 24, 24)


def test_image_folder_bad_files(tmp_path):
    with pytest.raises(data_io.DataError, match="broken.jpg: not a readable image"):
        data_io.load_images("imagefolder", str(write_folder(tmp_path / "a", bad_file=True)), 24, 0)
    with pytest.raises(data_io.DataError, match="class 'emu' has no folder in train/"):
        data_io.load_images("imagefolder", str(write_folder(tmp_path / "b", extra_val_class=True)), 24, 0)
    with pytest.raises(data_io.DataError, match="val: missing"):
        root = tmp_path / "c"
        (root / "train" / "x").mkdir(parents=True)
        data_io.load_images("imagefolder", str(root), 24, 0)


def test_digits_and_augmentation():
    d = data_io.load_images("digits", "", 8, 0)
    assert (len(d.train), len(d.dev), d.channels) == (1437, 360, 1)
    x = d.train[5]["pixel_values"]
    d.train.epoch = 1
    d.train.epoch = 0
    assert torch.equal(x, d.train[5]["pixel_values"])          # the same (seed, epoch, index): the same draw


# --- runs -----------------------------------------------------------------------------------------------
TINY_RUN = ["--width=0.0625", "--search_epochs=2", "--retrain_epochs=1", "--eb_check_every=5", "--save_every=10",
            "--batch_size=64", "--measure_speed=false"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ["resnet18", "resnet50", "mobilenet_v2"])
def test_resnet_script_end_to_end(tmp_path, monkeypatch, model):
    from tests.test_tabular import run_script
    r = run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=r", f"--model={model}", *TINY_RUN], monkeypatch)
    assert r["pruning"]["granularity"] == "channels" and r["total_params"] < r["parameters"]["dense"]["total"]
    removed = sum(r["pruning"]["removed_units"].values())
    assert removed > 0 and r["metrics"]["final"]["accuracy"] is not None
    model = load_model(str(tmp_path / "r" / "model"))
    assert sum(p.numel() for p in model.parameters()) == r["total_params"]


@pytest.mark.slow
def test_kill_and_resume_a_cnn_is_exact(tmp_path, monkeypatch):
    from tests.test_tabular import Kill, run_script
    from pruning.convnets import experiment
    args = ["--trainer=activation", *TINY_RUN]
    whole = run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=whole", *args], monkeypatch)
    kill = Kill("checkpoints", 13)
    monkeypatch.setattr(experiment.EpochOfData, "on_step_end", lambda self, a, s, c, **k: kill.on_step_end(a, s, c, **k),
                        raising=False)
    with pytest.raises(KeyboardInterrupt):
        run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=killed", *args], monkeypatch)
    monkeypatch.undo()
    resumed = run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=killed", "--resume=true", *args], monkeypatch)
    assert resumed["pruning"]["mask_fingerprint"] == whole["pruning"]["mask_fingerprint"]
    assert resumed["pruning"]["eb_step"] == whole["pruning"]["eb_step"]
    assert resumed["dev_predictions"] == whole["dev_predictions"]
    a, b = load_model(str(tmp_path / "whole" / "model")), load_model(str(tmp_path / "killed" / "model"))
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


@pytest.mark.slow
def test_a_cnn_ticket_rewound_to_the_early_bird(tmp_path, monkeypatch, capsys):
    """MASK_FROM + REWIND_TO=early_bird on resnet.py: the source's channel mask removed at step 0 from its weights at
    the pruning step (the same dense evaluation, to the bit), every group's convolutions as wide as the mask keeps;
    an mlp.py run's neuron mask is refused before the run directory."""
    from tests.test_tabular import run_script
    from pruning.run import checkpoint as state_io
    args = ["--trainer=magnitude", "--search_epochs=1", "--retrain_epochs=0.5", *TINY_RUN[:1], *TINY_RUN[3:]]
    eb = run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=eb", "--save_eb_weights=true", *args], monkeypatch)
    ticket = run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=ticket", f"--mask_from={tmp_path / 'eb'}",
                                      "--rewind_to=early_bird", *args], monkeypatch)
    masks = state_io.read_run_masks(str(tmp_path / "eb"))[0]
    assert ticket["metrics"]["before_prune"] == eb["metrics"]["before_prune"]
    assert ticket["pruning"]["prune_step"] == 0 and ticket["total_params"] == eb["total_params"]
    for stage in ("ticket", "model"):
        model = load_model(str(tmp_path / "ticket" / stage))
        assert {n: model.get_submodule(n).out_channels for n in masks} == {n: int(m.sum()) for n, m in masks.items()}
    run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=mlp", "--trainer=magnitude", "--hidden=8,4",
                          "--search_epochs=1", "--retrain_epochs=0.5", "--measure_speed=false"], monkeypatch)
    with pytest.raises(SystemExit):
        run_script("resnet.py", [f"--out_dir={tmp_path / 'no'}", f"--mask_from={tmp_path / 'mlp'}", *args], monkeypatch)
    assert "holds a 'neurons' mask; this run prunes channels" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_compress_a_pruned_cnn(tmp_path, monkeypatch):
    from tests.test_tabular import run_script
    run_script("resnet.py", [f"--out_dir={tmp_path}", "--run_name=r", "--model=mobilenet_v2", "--trainer=magnitude",
                             "--search_epochs=0.2", "--retrain_epochs=0.2", "--width=0.25", "--batch_size=128",
                             "--measure_speed=false"], monkeypatch)
    subprocess.run([sys.executable, str(REPO / "compress.py"), str(tmp_path / "r"), "--threads=1", "--rounds=1",
                    "--latency_sentences=4", "--calibration_sentences=16"], check=True, cwd=REPO)
    record = __import__("json").loads((tmp_path / "r" / "compressed" / "compress.json").read_text())
    v = record["variants"]
    assert set(v) >= {"pytorch-pruned", "onnxruntime-fp32", "onnxruntime-int8", "openvino-fp32", "openvino-int8"}
    assert v["onnxruntime-fp32"]["accuracy"] == v["pytorch-pruned"]["accuracy"]  # the same function, exported
    assert v["onnxruntime-int8"]["bytes"] < v["onnxruntime-fp32"]["bytes"]
    assert (tmp_path / "r" / "compressed" / "openvino-int8" / "model.xml").exists()


def test_cifar_from_the_hub_offline_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(data_io.DataError, match="DATA_DIR=hub: uoft-cs/cifar10 could not be loaded"):
        data_io.load_images("cifar10", "hub", 32, 0)


def test_pretrained_folder(tmp_path):
    """PRETRAINED: a folder saved with save_pretrained (here a tiny random ResNet) loads, with the run's classes."""
    source = build_image_model("resnet18", 7, 3, "imagenet", width=1 / 16)
    source.save_pretrained(tmp_path / "pre")
    model = build_image_model("resnet18", 4, 3, "imagenet", pretrained=str(tmp_path / "pre"),
                              id2label={i: str(i) for i in range(4)})
    assert model.classifier[-1].out_features == 4
    torch.testing.assert_close(model.resnet.embedder.embedder.convolution.weight,
                               source.resnet.embedder.embedder.convolution.weight)


# --- compress.py on mlp.py runs: the dense reference (--dense), mixed 8/4-bit --------------------------
MLP_RUN = ["--hidden=128,128,64", "--search_epochs=3", "--retrain_epochs=5", "--batch_size=64", "--measure_speed=false",
           "--save_every=1000", "--eb_check_every=2"]


@pytest.fixture(scope="module")
def mlp_runs(tmp_path_factory):
    """A pruned (magnitude, 50%) and a dense mlp.py run on breast_cancer, each a few seconds, for every compress test."""
    from tests.test_tabular import run_script
    out = tmp_path_factory.mktemp("mlp-runs")
    with pytest.MonkeyPatch.context() as mp:
        run_script("mlp.py", [f"--out_dir={out}", "--run_name=pruned", "--trainer=magnitude", *MLP_RUN], mp)
        run_script("mlp.py", [f"--out_dir={out}", "--run_name=dense", "--trainer=dense", *MLP_RUN], mp)
    return out


def compress_config(*argv):
    import compress
    from pruning.run.experiment import configure
    return configure(vars(compress), list(argv))


FAST_COMPRESS = ["--threads=1", "--rounds=1", "--latency_sentences=4", "--calibration_sentences=16"]


def test_compress_an_mlp_with_its_dense_run_and_mixed_precision(mlp_runs, tmp_path):
    import json
    import onnxruntime as ort
    import compress
    from pruning.run import schema
    out = tmp_path / "c"
    compress.main(compress_config(f"--run={mlp_runs / 'pruned'}", f"--dense={mlp_runs / 'dense'}",
                                  "--variants=int8,mixed", f"--out_dir={out}", *FAST_COMPRESS))
    record = json.loads((out / "compress.json").read_text())
    v = record["variants"]
    assert list(v)[:3] == ["pytorch-dense", "dense-onnxruntime-int8", "dense-openvino-int8"]  # dense rows first
    assert {v[k]["model"] for k in list(v)[:3]} == {"dense"} and v["dense-openvino-int8"]["bytes"] > 0
    dense_acc = schema.read(mlp_runs / "dense").metrics.final.accuracy
    assert abs(v["pytorch-dense"]["accuracy"] - dense_acc) <= 1 / record["dev_rows"]  # the trained dense model
    assert record["fastest_dense"] in ("dense-onnxruntime-int8", "dense-openvino-int8")
    assert v[record["fastest_dense"]]["vs_fastest_dense"] == 1.0
    table = (out / "table.md").read_text()
    assert "× fastest dense" in table and "untrained" not in table
    # mixed: written, loads in ONNX Runtime with 4-bit MatMulNBits, evaluates, and is smaller than int8
    mixed = out / "onnxruntime-mixed" / "model.onnx"
    import onnx
    assert any(n.op_type == "MatMulNBits" for n in onnx.load(str(mixed)).graph.node)
    session = ort.InferenceSession(str(mixed), providers=["CPUExecutionProvider"])
    assert session.run(None, {"features": np.zeros((3, 30), np.float32)})[0].shape == (3, 2)
    assert v["onnxruntime-mixed"]["accuracy"] > 0.8 and v["onnxruntime-mixed"]["bytes"] < v["onnxruntime-int8"]["bytes"]
    plan = record["mixed"]
    assert plan["importance"] == "magnitude" and set(plan["bits"]) == {"body.0", "body.4", "body.8"}  # the hidden Linears
    assert plan["four_bit_fraction"] >= 0.5 and 4 <= plan["average_bits"] < 8


def test_compress_without_dense_says_the_dense_row_is_untrained(mlp_runs, tmp_path):
    import json
    import compress
    out = tmp_path / "c"
    compress.main(compress_config(f"--run={mlp_runs / 'pruned'}", "--variants=int8", f"--out_dir={out}", *FAST_COMPRESS))
    record = json.loads((out / "compress.json").read_text())
    v = record["variants"]
    assert "dense-onnxruntime-int8" not in v and v["pytorch-dense (untrained)"]["accuracy"] is None
    assert record["fastest_dense"] == "pytorch-dense (untrained)" and "onnxruntime-mixed" not in v
    assert "the dense rows are untrained, for speed only" in (out / "table.md").read_text()


def test_compare_against_the_faster_dense_int8_row():
    """Hand-built rows whose answers are known: the reference is the faster dense int8 deployment, even when dense
    PyTorch fp32 is faster still; without dense int8 rows, the fastest dense row."""
    from pruning.convnets.deploy import compare

    def row(model, precision, speed):
        return {"model": model, "precision": precision, "examples_per_s": speed}
    record = {"variants": {"pytorch-dense": row("dense", "fp32", 500.0), "dense-onnxruntime-int8": row("dense", "int8", 40.0),
                           "dense-openvino-int8": row("dense", "int8", 50.0), "pytorch-pruned": row("pruned", "fp32", 25.0),
                           "onnxruntime-int8": row("pruned", "int8", 100.0)}}
    compare(record)
    assert record["fastest_dense"] == "dense-openvino-int8"
    assert record["variants"]["onnxruntime-int8"]["vs_fastest_dense"] == 2.0
    assert record["variants"]["dense-onnxruntime-int8"]["vs_fastest_dense"] == 0.8
    assert record["variants"]["pytorch-pruned"]["vs_fastest_dense"] == 0.5
    untrained = {"variants": {"pytorch-dense (untrained)": row("dense", "fp32", 20.0), "onnxruntime-int8": row("pruned", "int8", 30.0)}}
    compare(untrained)
    assert untrained["fastest_dense"] == "pytorch-dense (untrained)" and untrained["variants"]["onnxruntime-int8"]["vs_fastest_dense"] == 1.5
    with pytest.raises(ValueError, match="no dense row"):
        compare({"variants": {"onnxruntime-int8": row("pruned", "int8", 30.0)}})


def doctored(run, to, **changes):
    """A copy of the finished run `run` at `to` whose results.json has `changes` (config settings by key, or "script")."""
    import json
    import shutil
    shutil.copytree(run, to)
    r = json.loads((to / "results.json").read_text())
    for k, value in changes.items():
        if k == "script":
            r["script"] = value
        else:
            r["config"][k] = value
    (to / "results.json").write_text(json.dumps(r))
    return to


def test_a_dense_run_of_another_architecture_is_refused_before_any_work(mlp_runs, tmp_path):
    import compress
    from pruning.settings import ConfigError
    other = doctored(mlp_runs / "dense", tmp_path / "other", HIDDEN="64,32")
    out = tmp_path / "c"
    with pytest.raises(ConfigError, match=r"--dense=.*other is a dense run of mlp.py, hidden='64,32' \(this run: "
                                          r"'128,128,64'\); it must be a dense run \(--trainer=dense\) of mlp.py"):
        compress.main(compress_config(f"--run={mlp_runs / 'pruned'}", f"--dense={other}", f"--out_dir={out}"))
    with pytest.raises(ConfigError, match=r"is a magnitude run of mlp.py; it must be a dense run"):
        compress.main(compress_config(f"--run={mlp_runs / 'pruned'}", f"--dense={mlp_runs / 'pruned'}", f"--out_dir={out}"))
    assert not out.exists() and not (tmp_path / "c.work").exists()


def test_mixed_on_a_cnn_is_refused_naming_the_missing_4_bit_convolution(mlp_runs, tmp_path):
    """The refusal reads results.json only: a copy of the MLP run that says it is a resnet.py run stands for one."""
    import compress
    from pruning.settings import ConfigError
    cnn = doctored(mlp_runs / "pruned", tmp_path / "cnn", script="resnet.py")
    with pytest.raises(ConfigError, match=r"--variants=mixed: ONNX Runtime \S+ has 4-bit weights \(MatMulNBits\) for "
                                          r"MatMul and embedding lookups only, no 4-bit convolution.*leave mixed out "
                                          r"of --variants"):
        compress.main(compress_config(f"--run={cnn}", "--variants=int8,mixed"))
    from pruning.convnets.deploy import check
    results, extra, dense = check(compress_config(f"--run={cnn}"), variants_named=False)  # the default: skipped
    assert extra == [] and dense is None
    with pytest.raises(ConfigError, match="--block_size=8: ONNX Runtime .* takes blocks of 16, 32, 64, 128, 256"):
        check(compress_config(f"--run={mlp_runs / 'pruned'}", "--variants=mixed", "--block_size=8"))
    assert not (cnn / "compressed").exists()


# --- the studies -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--script=resnet.py"], ["--script=mlp.py", "--train_subset=100"]])
def test_lottery_refuses_to_fraction_with_a_channel_script_before_any_work(tmp_path, argv):
    """One clear message, before the passed-on settings are checked against the script or anything is written."""
    import lottery
    from pruning.settings import ConfigError
    with pytest.raises(ConfigError, match=r"--script=(resnet|mlp).py with --procedure=to_fraction: .* heads and whole "
                                          r"MLPs .* use --procedure=early_bird"):
        lottery.settings([f"--out_dir={tmp_path / 'study'}", "--procedure=to_fraction", *argv])
    assert not (tmp_path / "study").exists()


def test_lottery_refuses_to_fraction_with_a_renamed_copy_and_a_granularity_with_a_channel_script(tmp_path):
    import shutil
    import lottery
    from pruning.settings import ConfigError
    copy_of = shutil.copy(REPO / "mlp.py", tmp_path / "my_mlp.py")
    with pytest.raises(ConfigError, match="my_mlp.py with --procedure=to_fraction"):
        lottery.settings([f"--out_dir={tmp_path / 'study'}", f"--script={copy_of}", "--procedure=to_fraction"])
    with pytest.raises(ConfigError, match="--granularity: mlp.py prunes channels .* or neurons .* leave --granularity out"):
        lottery.settings([f"--out_dir={tmp_path / 'study'}", "--script=mlp.py", "--granularity=weights"])
    config, _ = lottery.settings([f"--out_dir={tmp_path / 'study'}", "--script=resnet.py", "--seeds=1"])
    assert config["GRANULARITY"] == "channels" and config["REWINDS"] == ["pretrained", "early_bird"]
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_lottery_on_mlp_neurons_end_to_end(tmp_path):
    """One seed, breast_cancer, a 16-8-4 MLP: the magnitude and gradient early-bird runs, the dense run and the good,
    random and bad tickets from both starting points; lottery.md has every ticket's row, the neuron stability between
    criteria per layer, and no head sections."""
    import lottery
    from pruning.run import checkpoint as state_io
    from pruning.studies import tickets
    out = tmp_path / "study"
    argv = ["--script=mlp.py", "--seeds=1", "--epochs=1", f"--out_dir={out}", "--hidden=16,8,4", "--search_epochs=2",
            "--retrain_epochs=1", "--eb_check_every=2", "--batch_size=64", "--save_every=1000"]
    lottery.main(argv)
    names = {p.name for p in out.iterdir() if (p / "results.json").exists()}
    assert names == {"eb-magnitude-s1", "eb-gradient-s1", "dense-s1", *(f"{k}-{r}-s1" for k in tickets.KINDS
                                                                      for r in ("pretrained", "early_bird"))}
    good, scores, _ = state_io.read_run_masks(str(out / "eb-magnitude-s1"))
    for kind in tickets.KINDS:
        ticket = state_io.read_run_masks(str(out / "tickets" / "s1" / kind))[0]
        assert {n: int(m.sum()) for n, m in ticket.items()} == {n: int(m.sum()) for n, m in good.items()}
        if kind == "bad":
            assert all(torch.equal(ticket[n], tickets.bad_mask(good, scores)[n]) for n in good)
        for rewind in ("pretrained", "early_bird"):  # trained with exactly the ticket's neurons
            kept = state_io.read_run_masks(str(out / f"{kind}-{rewind}-s1"))[0]
            assert all(torch.equal(kept[n], ticket[n]) for n in ticket)
    eb, rewound = (__import__("json").loads((out / n / "results.json").read_text())
                   for n in ("eb-magnitude-s1", "good-early_bird-s1"))
    assert rewound["metrics"]["before_prune"] == eb["metrics"]["before_prune"]
    text = (out / "lottery.md").read_text()
    assert text.startswith("# Lottery tickets: magnitude, neurons, breast_cancer dev accuracy")
    for row in ("| dense (no mask) |", "| good |", "| random |", "| bad |", "| between criteria | gradient / magnitude "
                "| neurons | all |", "a layer: one channel group", "| ticket | from the initial"):
        assert row in text, row
    assert "Heads kept" not in text and "head" not in text.lower().replace("headline", "")
    assert (out / "lottery_accuracy.png").exists() and (out / "lottery_stability.png").exists()
    # re-run: every finished run is skipped (the channel runs' records compare as the text runs' do), the report rebuilt
    stamps = {p.name: (p / "results.json").stat().st_mtime_ns for p in out.iterdir() if (p / "results.json").exists()}
    (out / "lottery.md").unlink()
    lottery.main(argv)
    assert stamps == {n: (out / n / "results.json").stat().st_mtime_ns for n in stamps} and (out / "lottery.md").exists()
