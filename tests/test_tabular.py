"""mlp.py: the tabular layouts read strictly (bundled sets, Titanic in Kaggle's layout, any CSV) with bad files the
tests write, preprocessing fit on the train split only, every criterion end to end, kill and resume, and a fixed mask
(MASK_FROM) from the initial or the early-bird weights (REWIND_TO, SAVE_EB_WEIGHTS) with its bad inputs."""
import csv
import runpy
import sys

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from pruning.convnets import data as data_io, experiment
from pruning.convnets.models import load_model

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent

TITANIC_ROWS = [
    ["1", "0", "3", "Braund, Mr. Owen Harris", "male", "22", "1", "0", "A/5 21171", "7.25", "", "S"],
    ["2", "1", "1", "Cumings, Mrs. John Bradley", "female", "38", "1", "0", "PC 17599", "71.2833", "C85", "C"],
    ["3", "1", "3", "Heikkinen, Miss. Laina", "female", "26", "0", "0", "STON/O2. 3101282", "7.925", "", "S"],
    ["4", "1", "1", "Futrelle, Mrs. Jacques Heath", "female", "35", "1", "0", "113803", "53.1", "C123", "S"],
    ["5", "0", "3", "Allen, Mr. William Henry", "male", "35", "0", "0", "373450", "8.05", "", "S"],
    ["6", "0", "3", "Moran, Mr. James", "male", "", "0", "0", "330877", "8.4583", "", "Q"],
]


def write_titanic(path, rows=None, header=None, copies=5):
    rows = rows if rows is not None else [[str(i * 6 + int(r[0]))] + r[1:] for i in range(copies) for r in TITANIC_ROWS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or data_io.TITANIC_COLUMNS)
        w.writerows(rows)
    return path


def test_bundled_breast_cancer():
    d = data_io.load_tabular("breast_cancer", "", "label")
    assert d.train.features.shape == (455, 30) and d.dev.features.shape == (114, 30)
    # scaled on the train split only: its mean is 0 and its std 1, the dev split's are not exactly
    torch.testing.assert_close(d.train.features.mean(0), torch.zeros(30), atol=1e-5, rtol=0)
    assert not torch.allclose(d.dev.features.mean(0), torch.zeros(30), atol=1e-3)


def test_titanic_layout(tmp_path):
    d = data_io.load_tabular("titanic", str(write_titanic(tmp_path / "train.csv").parent), "label")
    assert d.label_names == ["0", "1"] and len(d.train) + len(d.dev) == 30
    assert "Sex=female" in d.feature_names and "Embarked=Q" in d.feature_names and "Age" in d.feature_names
    assert not any(n.startswith(("Name", "Ticket", "Cabin", "PassengerId")) for n in d.feature_names)
    assert torch.isfinite(d.train.features).all() and torch.isfinite(d.dev.features).all()  # Age imputed


@pytest.mark.parametrize("edit, message", [
    (lambda rows: rows[3].__setitem__(4, "unknown"), r"train.csv, row 5: Sex='unknown'"),
    (lambda rows: rows[6].__setitem__(1, "2"), r"train.csv, row 8: Survived='2'"),
    (lambda rows: rows[2].__setitem__(5, "old"), r"train.csv, row 4: Age='old' is not a number"),
    (lambda rows: rows[4].pop(), r"train.csv, row 6: 11 fields, the header has 12"),
    (lambda rows: rows[1].__setitem__(1, ""), r"train.csv, row 3: empty label \(Survived\)"),
])
def test_titanic_bad_rows(tmp_path, edit, message):
    rows = [list(r) for r in TITANIC_ROWS * 3]
    edit(rows)
    with pytest.raises(data_io.DataError, match=message):
        data_io.load_tabular("titanic", str(write_titanic(tmp_path / "train.csv", rows)), "label")


def test_titanic_wrong_header_and_missing_file(tmp_path):
    header = list(data_io.TITANIC_COLUMNS)
    header[4] = "Gender"
    with pytest.raises(data_io.DataError, match="row 1: header .* is not Kaggle's Titanic"):
        data_io.load_tabular("titanic", str(write_titanic(tmp_path / "train.csv", header=header)), "label")
    with pytest.raises(data_io.DataError, match="nowhere.csv: missing"):
        data_io.load_tabular("titanic", str(tmp_path / "nowhere.csv"), "label")


def test_any_csv(tmp_path):
    path = tmp_path / "my.csv"
    rng = np.random.RandomState(0)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["size", "colour", "outcome"])
        for i in range(40):
            w.writerow([f"{rng.randn():.3f}" if i % 7 else "", ["red", "green", "blue"][i % 3], ["yes", "no"][i % 2]])
    d = data_io.load_tabular("csv", str(path), "outcome")
    assert d.columns == {"size": "numeric", "colour": "categorical"}
    assert d.label_names == ["no", "yes"] and d.feature_names == ["size", "colour=blue", "colour=green", "colour=red"]
    with pytest.raises(data_io.DataError, match="no label column 'target'"):
        data_io.load_tabular("csv", str(path), "target")
    lines = path.read_text().splitlines()
    lines[9] = lines[9].rsplit(",", 1)[0] + ","
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(data_io.DataError, match=r"my.csv, row 10: empty label \(outcome\)"):
        data_io.load_tabular("csv", str(path), "outcome")


# --- runs -----------------------------------------------------------------------------------------------
def run_script(script, argv, monkeypatch):
    namespace = runpy.run_path(str(REPO / script))
    namespace["__file__"] = str(REPO / script)
    monkeypatch.setattr(sys, "argv", [script, *argv])
    return experiment.main(namespace, "tabular" if script == "mlp.py" else "image")


FAST = ["--search_epochs=4", "--retrain_epochs=3", "--hidden=32,16,8", "--eb_check_every=5", "--save_every=5",
        "--measure_speed=false", "--data=wine"]


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["dense", "slimming", "magnitude", "gradient", "undecayed", "activation"])
def test_every_criterion_end_to_end(tmp_path, monkeypatch, trainer):
    r = run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=r", f"--trainer={trainer}", *FAST], monkeypatch)
    from pruning.run import schema
    read = schema.read(tmp_path / "r")
    assert read.metrics.final.accuracy is not None and read.trainer == trainer
    if trainer != "dense":
        assert read.pruning.criterion == trainer and sum(read.pruning.removed_units.values()) == round(0.5 * 56)
        assert (tmp_path / "r" / "masks.safetensors").exists() and (tmp_path / "r" / "mask_distance.png").exists()
        assert r["total_params"] < r["parameters"]["dense"]["total"]
    load_model(str(tmp_path / "r" / "model"))


class Kill(TrainerCallback):
    def __init__(self, phase_dir, step):
        self.phase_dir, self.step = phase_dir, step

    def on_step_end(self, args, state, control, **kwargs):
        if args.output_dir.endswith(self.phase_dir) and state.global_step == self.step:
            raise KeyboardInterrupt("killed")


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["checkpoints", "retrain_checkpoints"])
def test_kill_and_resume_is_exact(tmp_path, monkeypatch, phase):
    args = ["--trainer=gradient", "--dropout=0.2", *FAST]
    whole = run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=whole", *args], monkeypatch)
    original = experiment.EpochOfData.on_step_end
    kill = Kill(phase, 12)
    monkeypatch.setattr(experiment.EpochOfData, "on_step_end",
                        lambda self, a, s, c, **k: kill.on_step_end(a, s, c, **k), raising=False)
    with pytest.raises(KeyboardInterrupt):
        run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=killed", *args], monkeypatch)
    monkeypatch.setattr(experiment.EpochOfData, "on_step_end", original, raising=False)
    assert (tmp_path / "killed" / phase / "checkpoint-10").is_dir()
    resumed = run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=killed", "--resume=true", *args], monkeypatch)
    assert resumed["pruning"]["eb_step"] == whole["pruning"]["eb_step"]
    assert resumed["pruning"]["mask_fingerprint"] == whole["pruning"]["mask_fingerprint"]
    assert resumed["metrics"]["final"] == whole["metrics"]["final"]
    assert resumed["dev_predictions"] == whole["dev_predictions"]
    a, b = load_model(str(tmp_path / "whole" / "model")), load_model(str(tmp_path / "killed" / "model"))
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n


def test_bad_settings_and_data_exit_before_the_run_dir(tmp_path, monkeypatch, capsys):
    for argv, message in ((["--pruning_rate=1.5"], "PRUNING_RATE=1.5"), (["--data=titanic"], "needs DATA_FILE"),
                          (["--threshold=perlayer"], "THRESHOLD='perlayer'")):
        with pytest.raises(SystemExit) as e:
            run_script("mlp.py", [f"--out_dir={tmp_path / 'runs'}", *argv], monkeypatch)
        assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_mlp_defaults_in_a_process_and_help(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, "mlp.py", f"--out_dir={tmp_path}", "--run_name=default"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "early bird:" in out.stdout and (tmp_path / "default" / "model" / "model.pt").exists()
    helped = subprocess.run([sys.executable, "resnet.py", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "--pruning_rate" in helped.stdout and "--data_dir" in helped.stdout and "--stem" in helped.stdout


def test_sweep_runs_the_mlp_script(tmp_path):
    import subprocess
    out = subprocess.run([sys.executable, "sweep.py", "--script=mlp.py", "--trainers=dense,magnitude", "--rates=0.3",
                          "--seeds=1", f"--out_dir={tmp_path}", "--search_epochs=2", "--retrain_epochs=1",
                          "--hidden=16,8,4", "--measure_speed=false"], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "results.md").exists() and "magnitude" in (tmp_path / "results.md").read_text()


# --- MASK_FROM, REWIND_TO, SAVE_EB_WEIGHTS (what lottery.py's tickets train with) -------------------------
SMALL = ["--hidden=16,8,4", "--search_epochs=2", "--retrain_epochs=1", "--eb_check_every=2", "--save_every=1000",
         "--batch_size=64", "--measure_speed=false", "--trainer=magnitude"]
GROUPS = ("body.0", "body.4", "body.8")  # the hidden Linears: one neuron group each


@pytest.fixture(scope="module")
def eb_source(tmp_path_factory):
    """An early-bird mlp.py run on breast_cancer that kept its weights at the pruning step, and two runs of its mask
    fixed from step 0: from the initial weights and from those early-bird weights."""
    out = tmp_path_factory.mktemp("fixed")
    with pytest.MonkeyPatch.context() as mp:
        run_script("mlp.py", [f"--out_dir={out}", "--run_name=eb", "--save_eb_weights=true", *SMALL], mp)
        for rewind in ("pretrained", "early_bird"):
            run_script("mlp.py", [f"--out_dir={out}", f"--run_name={rewind}", f"--mask_from={out / 'eb'}",
                                  f"--rewind_to={rewind}", *SMALL], mp)
    return out


def test_a_fixed_mask_trains_from_step_0_and_stays_that_mask(eb_source):
    from pruning.run import checkpoint as state_io, schema
    source = state_io.read_run_masks(str(eb_source / "eb"))[0]
    for rewind in ("pretrained", "early_bird"):
        run = eb_source / rewind
        kept, scores, meta = state_io.read_run_masks(str(run))
        assert kept.keys() == source.keys() == set(GROUPS) and scores is None
        assert all(torch.equal(kept[n], source[n]) for n in GROUPS)
        r = schema.read(run)
        assert r.pruning.prune_step == 0 and r.pruning.fixed_mask_from == str((eb_source / "eb").resolve())
        assert r.pruning.removed_units == {n: int((~source[n]).sum()) for n in GROUPS}
        assert r.optimizer_steps == 3 * 8  # SEARCH_EPOCHS + RETRAIN_EPOCHS on 455 rows in batches of 64
        for stage in ("ticket", "model"):  # at step 0 and after training: the mask's shapes, the classifier's inputs
            model = load_model(str(run / stage))
            assert [model.get_submodule(n).out_features for n in GROUPS] == [int(source[n].sum()) for n in GROUPS]
            assert model.classifier.in_features == int(source["body.8"].sum())
        assert not (run / "mask_distance.png").exists()


def _sliced(state, masks):
    """The dense `state` of a 3-hidden-layer TabularMLP restricted to the kept neurons of `masks`."""
    k = [masks[n] for n in GROUPS]
    out = {}
    for i, name in enumerate(GROUPS):
        layer, norm = int(name.split(".")[1]), int(name.split(".")[1]) + 1
        w = state[f"body.{layer}.weight"][k[i]]
        out[f"body.{layer}.weight"] = w if i == 0 else w[:, k[i - 1]]
        out[f"body.{layer}.bias"] = state[f"body.{layer}.bias"][k[i]]
        for key in ("weight", "bias", "running_mean", "running_var"):
            out[f"body.{norm}.{key}"] = state[f"body.{norm}.{key}"][k[i]]
        out[f"body.{norm}.num_batches_tracked"] = state[f"body.{norm}.num_batches_tracked"]
    out["classifier.weight"] = state["classifier.weight"][:, k[-1]]
    out["classifier.bias"] = state["classifier.bias"]
    return out


def test_rewinding_restores_the_weights_bit_exactly_at_step_0(eb_source):
    from safetensors.torch import load_file
    from pruning.run import checkpoint as state_io, schema
    masks = state_io.read_run_masks(str(eb_source / "eb"))[0]
    snapshot = load_file(str(eb_source / "eb" / "weights_at_prune.safetensors"))
    initial = experiment.build_model({"SEED": 42, "HIDDEN": "16,8,4", "DROPOUT": 0.1},
                                     data_io.load_tabular("breast_cancer", "", "label"), "tabular").state_dict()
    for rewind, dense in (("early_bird", snapshot), ("pretrained", initial)):
        at_step_0 = load_model(str(eb_source / rewind / "ticket")).state_dict()
        expected = _sliced(dense, masks)
        assert at_step_0.keys() == expected.keys()
        for n in expected:
            assert torch.equal(at_step_0[n], expected[n]), (rewind, n)
    # the dense weights before removal are the source's at its pruning step: the same dev evaluation, to the bit
    eb, rewound = schema.read(eb_source / "eb"), schema.read(eb_source / "early_bird")
    assert rewound.metrics.before_prune == eb.metrics.before_prune


def test_bad_fixed_masks_exit_before_the_run_dir(eb_source, tmp_path, monkeypatch, capsys):
    from pruning.run import checkpoint as state_io
    foreign = tmp_path / "heads"
    state_io.write(str(foreign / "masks.safetensors"), {}, {"granularity": "heads+neurons", "groups": {}})
    masks_only = tmp_path / "masks-only"
    masks_only.mkdir()
    (masks_only / "masks.safetensors").write_bytes((eb_source / "eb" / "masks.safetensors").read_bytes())
    cases = ((["--mask_from=" + str(tmp_path / "nowhere")], "MASK_FROM=.*nowhere: no masks.safetensors there"),
             ([f"--mask_from={foreign}"], "holds a 'heads\\+neurons' mask; this run prunes neurons"),
             ([f"--mask_from={eb_source / 'eb'}", "--hidden=16,8,5"], "a mask for another model .* 3 groups, 28 units"),
             ([f"--mask_from={eb_source / 'eb'}", "--trainer=dense"], "MASK_FROM trains a fixed mask: it needs a pruning"),
             ([f"--mask_from={masks_only}", "--rewind_to=early_bird"], "REWIND_TO=early_bird needs .*weights_at_prune"),
             ([f"--mask_from={eb_source / 'eb'}", "--rewind_to=init"], "REWIND_TO='init': choose one of pretrained"),
             (["--save_eb_weights=true", "--trainer=dense"], "SAVE_EB_WEIGHTS keeps the weights"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run_script("mlp.py", [f"--out_dir={tmp_path / 'runs'}", *SMALL, *argv], monkeypatch)
        err = capsys.readouterr().err
        assert e.value.code == 2 and __import__("re").search(message, err), (argv, err)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_a_killed_fixed_mask_run_resumes_exactly(eb_source, tmp_path, monkeypatch):
    args = [f"--mask_from={eb_source / 'eb'}", "--rewind_to=early_bird", "--dropout=0.2", *SMALL, "--save_every=5",
            "--log_every=5"]
    whole = run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=whole", *args], monkeypatch)
    original = experiment.EpochOfData.on_step_end
    kill = Kill("retrain_checkpoints", 12)
    monkeypatch.setattr(experiment.EpochOfData, "on_step_end",
                        lambda self, a, s, c, **k: kill.on_step_end(a, s, c, **k), raising=False)
    with pytest.raises(KeyboardInterrupt):
        run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=killed", *args], monkeypatch)
    monkeypatch.setattr(experiment.EpochOfData, "on_step_end", original, raising=False)
    assert (tmp_path / "killed" / "retrain_checkpoints" / "checkpoint-10").is_dir()
    resumed = run_script("mlp.py", [f"--out_dir={tmp_path}", "--run_name=killed", "--resume=true", *args], monkeypatch)
    assert resumed["metrics"] == whole["metrics"] and resumed["dev_predictions"] == whole["dev_predictions"]
    a, b = load_model(str(tmp_path / "whole" / "model")), load_model(str(tmp_path / "killed" / "model"))
    for (n, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), n
