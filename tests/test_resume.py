"""Resume after a real SIGKILL in each phase gives exactly the uninterrupted run; reruns are deterministic."""
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_script, tiny_args
from pruning import PRUNING_STATE_FILE
from pruning.run.checkpoint import read_run_masks

# 20 steps an epoch; checks every 2 steps, EB at step 6, retraining to step 26; a checkpoint every 3 steps.
SETTINGS = dict(trainer="gradient", save_every=3)
# Heads + neurons: at step 6 the smaller model is checkpointed and training continues from that checkpoint.
STRUCTURED = dict(SETTINGS, granularity="heads+neurons", head_rate=0.5)
# bf16 (CPU autocast) with two micro-batches of 8 per optimizer step: the same 20 optimizer steps an epoch.
MIXED = dict(SETTINGS, precision="bf16", grad_accumulation=2, batch_size=8)


def finished(out, name):
    run_dir = out / name
    res = json.loads((run_dir / "results.json").read_text())
    weights = load_file(run_dir / "model" / "model.safetensors")
    masks, scores, _ = read_run_masks(str(run_dir))
    return res, weights, (masks, scores)


def same_run(a, b):
    (ra, wa, (ma, sa)), (rb, wb, (mb, sb)) = a, b
    # masks.safetensors: the same masks, and the same scores they were selected from (kept across a restart)
    assert sa is not None and sb is not None and ma.keys() == mb.keys() == sa.keys() == sb.keys()
    assert all(torch.equal(ma[n], mb[n]) and torch.equal(sa[n], sb[n]) for n in ma)
    pa, pb = ra["pruning"], rb["pruning"]
    assert pa["eb_step"] == pb["eb_step"] and pa["prune_step"] == pb["prune_step"]
    assert pa["mask_fingerprint"] == pb["mask_fingerprint"]
    assert pa["distance_history"] == pb["distance_history"]      # every check's distances and mask hash
    assert ra["prunable_nonzero"] == rb["prunable_nonzero"] and ra["optimizer_steps"] == rb["optimizer_steps"]
    assert ra["metrics"] == rb["metrics"]
    # the cost series continues exactly: restored log entries, then the totals saved with the checkpoint
    untimed = [[{k: v for k, v in e.items() if k not in ("train_seconds", "peak_memory_mb")} for e in r["cost_series"]]
               for r in (ra, rb)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == ra["optimizer_steps"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def reference_run(config, data, out, settings):
    proc = run_script("bert.py", tiny_args(config, data, out, run_name="ref", **settings))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return finished(out, "ref")


@pytest.fixture(scope="module")
def reference(tiny_bert_config, sst2_slice, tmp_path_factory):
    return reference_run(tiny_bert_config, sst2_slice, tmp_path_factory.mktemp("reference"), SETTINGS)


@pytest.fixture(scope="module")
def structured_reference(tiny_bert_config, sst2_slice, tmp_path_factory):
    return reference_run(tiny_bert_config, sst2_slice, tmp_path_factory.mktemp("structured"), STRUCTURED)


def test_same_seed_and_config_rerun_is_identical(reference, tiny_bert_config, sst2_slice, tmp_path):
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="again", **SETTINGS))
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_run(reference, finished(tmp_path, "again"))


KILLS = [
    (5, 3, "search"),      # killed during the search: FIFO of 1 mask and 1 step of accumulated scores
    (7, 6, "retrain"),     # killed right after pruning at step 6, before any retraining step was saved
    (17, 15, "retrain"),   # killed during retraining
    (23, 21, "retrain"),   # killed in the second epoch: its data order must be drawn again as it was at step 20
]


def kill_and_resume(config, data, out, settings, kill_at, resumes_from, phase):
    args = tiny_args(config, data, out, run_name="crash", **settings)
    killed = run_script("tests/sabotaged_run.py", ["sigkill", str(kill_at), *args])
    assert killed.returncode == -9, killed.stderr[-3000:]
    checkpoints = out / "crash" / "checkpoints"
    newest = max(checkpoints.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert newest.name == f"checkpoint-{resumes_from}"
    from safetensors import safe_open
    with safe_open(newest / PRUNING_STATE_FILE, "pt") as f:
        assert json.loads(f.metadata()["json"])["run_state"]["phase"] == phase
    proc = run_script("bert.py", args + ["--resume=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return finished(out, "crash")


@pytest.mark.parametrize("kill_at,resumes_from,phase", KILLS)
def test_resume_after_sigkill_matches_the_uninterrupted_run(reference, kill_at, resumes_from, phase,
                                                            tiny_bert_config, sst2_slice, tmp_path):
    same_run(reference, kill_and_resume(tiny_bert_config, sst2_slice, tmp_path, SETTINGS, kill_at, resumes_from, phase))


def test_resume_in_bf16_with_gradient_accumulation_matches_the_uninterrupted_run(tiny_bert_config, sst2_slice,
                                                                              tmp_path):
    reference = reference_run(tiny_bert_config, sst2_slice, tmp_path / "reference", MIXED)
    same_run(reference, kill_and_resume(tiny_bert_config, sst2_slice, tmp_path / "killed", MIXED, 17, 15, "retrain"))


@pytest.mark.parametrize("kill_at,resumes_from,phase", [
    (5, 3, "search"),
    (9, 8, "retrain"),     # the head masks settle one check later (step 8): resumes from the pruning checkpoint
    (17, 15, "retrain"),
])
def test_structured_resume_rebuilds_the_smaller_model_and_matches(structured_reference, kill_at, resumes_from, phase,
                                                                  tiny_bert_config, sst2_slice, tmp_path):
    assert structured_reference[0]["pruning"]["prune_step"] == 8
    resumed = kill_and_resume(tiny_bert_config, sst2_slice, tmp_path, STRUCTURED, kill_at, resumes_from, phase)
    same_run(structured_reference, resumed)
    assert resumed[0]["pruning"]["structure"] == structured_reference[0]["pruning"]["structure"]


def test_activation_scores_resume_mid_search(tiny_bert_config, sst2_slice, tmp_path):
    """The hooks' sums since the last check are part of the pruning state: a kill between checks loses nothing."""
    settings = dict(STRUCTURED, trainer="activation")
    reference = reference_run(tiny_bert_config, sst2_slice, tmp_path / "reference", settings)
    same_run(reference, kill_and_resume(tiny_bert_config, sst2_slice, tmp_path / "killed", settings, 5, 3, "search"))


def test_checkpoint_without_pruning_state_is_an_error_not_a_dense_model(tiny_bert_config, sst2_slice, tmp_path):
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="crash", **SETTINGS)
    killed = run_script("tests/sabotaged_run.py", ["sigkill", "8", *args])
    assert killed.returncode == -9
    for state in (tmp_path / "crash" / "checkpoints").glob(f"*/{PRUNING_STATE_FILE}"):
        state.unlink()
    proc = run_script("bert.py", args + ["--resume=true"])
    # a checkpoint without its pruning state is a partial one: nothing to resume, and how to clear the name
    assert proc.returncode == 2 and "is partial" in proc.stderr and "there is nothing to resume" in proc.stderr
    assert f"rm -r {tmp_path / 'crash'}" in proc.stderr and not (tmp_path / "crash" / "results.json").exists()
    from pruning.run.checkpoint import last_checkpoint_with_pruning_state
    with pytest.raises(FileNotFoundError, match="no checkpoint with a complete pruning state"):
        last_checkpoint_with_pruning_state(str(tmp_path / "crash" / "checkpoints"))


def test_resuming_with_another_criterion_is_one_clear_error(tiny_bert_config, sst2_slice, tmp_path):
    args = tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="crash", **SETTINGS)
    killed = run_script("tests/sabotaged_run.py", ["sigkill", "5", *args])
    assert killed.returncode == -9
    proc = run_script("bert.py", args + ["--resume=true", "--trainer=magnitude"])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--trainer: recorded 'gradient', requested 'magnitude'" in proc.stderr.strip().splitlines()[-1]
    (tmp_path / "crash" / "run_config.json").unlink()  # a run from before configurations were recorded:
    proc = run_script("bert.py", args + ["--resume=true", "--trainer=magnitude"])  # its checkpoint still refuses
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "was written by a gradient run" in proc.stderr.strip().splitlines()[-1]
