"""bert.py and roberta.py end to end on tiny models and a slice of the real SST-2 files."""
import json

import pytest
from safetensors.torch import load_file
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from conftest import ROBERTA_TOKENIZER, only_run_dir, run_script, tiny_args
from pruning import prunable_parameters


def test_bert_script_end_to_end(tiny_bert_config, sst2_slice, tmp_path):
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, pruning_rate=0.7))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    p = res["pruning"]
    assert res["trainer"] == "magnitude" and "random init" in res["model"]
    assert (res["train_rows"], res["dev_rows"]) == (320, 200)
    # 320 rows / 16 = 20 steps an epoch; EB at the third check (step 6), then one epoch of retraining.
    assert p["eb_found"] is True and p["eb_step"] == 6 and p["eb_epoch"] == pytest.approx(0.3)
    assert res["optimizer_steps"] == 26
    assert [h["step"] for h in p["distance_history"]["weights"]] == [2, 4, 6]
    assert res["prunable_nonzero"] == res["prunable_params"] - round(0.7 * res["prunable_params"])
    for stage in ("before_prune", "after_prune", "final"):
        assert 0 <= res["metrics"][stage]["accuracy"] <= 1 and res["metrics"][stage]["f1"] is not None
    assert set(res["phase_seconds"]) == {"search", "prune", "retrain"} and res["peak_rss_mb"] > 0
    labels = [int(line.rsplit("\t", 1)[1]) for line in (sst2_slice / "dev.tsv").read_text().splitlines()[1:]]
    dev = res["dev_predictions"]
    assert dev["label"] == labels   # in the file's order, not the length-grouped order HF evaluates in
    assert sum(p == y for p, y in zip(dev["predicted"], labels)) / len(labels) == res["metrics"]["final"]["accuracy"]
    assert (run_dir / "mask_distance.png").stat().st_size > 1000
    assert "early bird: found at step 6" in proc.stdout and "results:" in proc.stdout
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "model")
    zeros = sum(int((w == 0).sum()) for w in prunable_parameters(model).values())
    assert zeros == round(0.7 * res["prunable_params"])


def test_roberta_script_uses_the_real_roberta_tokenizer(tiny_roberta_config, sst2_slice, tmp_path):
    args = tiny_args(tiny_roberta_config, sst2_slice, tmp_path, tokenizer=ROBERTA_TOKENIZER, trainer="undecayed")
    proc = run_script("roberta.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(tmp_path)
    res = json.loads((run_dir / "results.json").read_text())
    assert res["model"].startswith("roberta") and "random init" in res["model"]
    assert res["pruning"]["criterion"] == "undecayed" and res["sparsity"] == pytest.approx(0.5, abs=1e-4)
    tok = AutoTokenizer.from_pretrained(run_dir / "model")
    assert tok("Hello world! cécé herlolip")["input_ids"] == [0, 31414, 232, 328, 740, 1140, 12695, 69, 46078, 1588, 2]


def test_dense_baseline_trains_the_same_total_budget(tiny_bert_config, sst2_slice, tmp_path):
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, trainer="Trainer", eval_every=10))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert res["trainer"] == "dense" and "pruning" not in res
    assert res["optimizer_steps"] == 40 and res["sparsity"] == 0.0
    timeline = res["accuracy_timeline"]
    assert [p["step"] for p in timeline] == [10, 20, 30, 40]
    seconds = [p["train_seconds"] for p in timeline]
    assert 0 < seconds[0] < seconds[1] < seconds[2] < seconds[3] <= res["train_seconds"]
    assert all(0 <= p["accuracy"] <= 1 for p in timeline)


def test_no_early_bird_prunes_at_the_end_of_the_search_budget_and_says_so(tiny_bert_config, sst2_slice, tmp_path):
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, eb_epsilon=1e-9, trainer="gradient")
    proc = run_script("bert.py", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((only_run_dir(tmp_path) / "results.json").read_text())
    assert res["pruning"]["eb_found"] is False and res["pruning"]["eb_step"] is None
    assert res["pruning"]["prune_step"] == 20 and res["optimizer_steps"] == 40
    assert "NOT found" in proc.stdout
    assert res["sparsity"] == pytest.approx(0.5, abs=1e-4)


def test_help_lists_every_setting():
    proc = run_script("bert.py", ["--help"])
    assert proc.returncode == 0
    for key in ("--pruning_rate", "--trainer", "--eb_epsilon", "--data_dir", "--model", "--resume"):
        assert key in proc.stdout
    assert "magnitude" in proc.stdout  # the trainer is shown by name


def test_bad_input_is_one_clear_line_and_exit_code_2(tmp_path):
    proc = run_script("bert.py", ["--pruning_rate=1.0", f"--out_dir={tmp_path}"])
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: pruning rate must be a number in [0, 1) (or one such number per layer), got 1.0"]
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("save_every", [1, 5])  # NaN on a checkpoint step / found by the next loss log
def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(save_every, tiny_bert_config, sst2_slice,
                                                                     tmp_path):
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="diverge", save_every=save_every)
    proc = run_script("tests/sabotaged_run.py", ["nan", "12", *args])
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "error: training diverged" in proc.stderr and "by step 1" in proc.stderr
    run_dir = tmp_path / "diverge"
    assert not (run_dir / "results.json").exists() and not (run_dir / "model").exists()
    checkpoints = sorted(int(p.name.split("-")[1]) for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert checkpoints and max(checkpoints) == (11 if save_every == 1 else 10)
    for step in checkpoints:
        weights = load_file(run_dir / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values()), step
