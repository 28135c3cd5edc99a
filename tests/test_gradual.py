"""Gradual pruning after the early bird: the cubic schedule, exact counts at the last update, no unit
pruned back in, masks fixed between updates, heads and neurons, and resume between two updates."""
import json

import pytest
import torch
from transformers import TrainerCallback

import bert
from conftest import run_script, tiny_args
from pruning.core.units import prunable_parameters
from pruning.run import experiment
from pruning.run.schedule import PhasePlan, gradual_fractions, gradual_steps
from test_resume import kill_and_resume, reference_run, same_run

# 20 steps an epoch; gradient scores settle at step 6; retraining to step 26; updates at steps 9, 13, 16.
GRADUAL = dict(trainer="gradient", save_every=3, gradual_updates=3)


def test_the_cubic_schedule():
    fractions = gradual_fractions(3, 0.5)
    assert fractions == pytest.approx([0.5, 0.5 + 0.5 * (1 - (2 / 3) ** 3), 0.5 + 0.5 * (1 - (1 / 3) ** 3), 1.0])
    assert fractions[-1] == 1.0 and gradual_fractions(1, 0.2) == [0.2, 1.0]
    assert gradual_steps(6, 20, 3, 0.5) == [9, 13, 16]
    assert gradual_steps(6, 20, 10, 0.5) == list(range(7, 17))
    with pytest.raises(ValueError, match="GRADUAL_UPDATES"):
        gradual_steps(6, 20, 11, 0.5)


def test_the_learning_rate_rewarms_to_its_value_at_pruning():
    plan = PhasePlan(total_steps=40, steps_per_epoch=20, search_steps=20, retrain_steps=20, warmup_steps=0,
                     first_check_after=0)
    at_prune = (40 - 6) / 40
    assert plan.lr_factor(10, 6, 26) == pytest.approx(at_prune * 16 / 20)          # one decay after pruning
    assert plan.lr_factor(14, 13, 26, peak_step=6) == pytest.approx(at_prune * 12 / 13)  # re-warmed at step 13
    assert plan.lr_factor(13, 13, 26, peak_step=6) == plan.lr_factor(13, None, None)


class ZerosEachStep(TrainerCallback):
    """Which prunable weights are exactly zero at the start of every step."""

    def __init__(self):
        self.zeros = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        params = prunable_parameters(model)
        self.zeros.append(torch.cat([p.detach().flatten() == 0 for p in params.values()]))


def test_gradual_weights_reach_the_target_exactly_and_never_regrow(tiny_bert_config, sst2_slice, tmp_path):
    recorder = ZerosEachStep()
    config = experiment.configure(vars(bert), tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="g",
                                                        **GRADUAL))
    results = experiment.run(config, bert.__file__, callbacks=(recorder,))
    gradual = results["pruning"]["gradual"]
    prune = results["pruning"]["prune_step"]
    assert prune == 6 and gradual["steps"] == [9, 13, 16] and gradual["done"] == 3
    counts = [int(z.sum()) for z in recorder.zeros]  # counts[s]: after s finished steps (masks change at a step's end)
    n = recorder.zeros[0].numel()
    expected = [round(f * 0.5 * n) for f in gradual["fractions"]]
    assert counts[:prune] == [0] * prune
    assert counts[prune:] == [expected[0]] * 3 + [expected[1]] * 4 + [expected[2]] * 3 + [expected[3]] * 10
    assert results["prunable_nonzero"] == n - round(0.5 * n)  # the target, exactly
    for before, after in zip(recorder.zeros, recorder.zeros[1:]):
        assert bool((before <= after).all())  # a pruned weight stays zero: nothing grows back
    assert len(set(gradual["fingerprints"])) == 3


def test_gradual_heads_and_neurons(tiny_bert_config, sst2_slice, tmp_path):
    settings = dict(granularity="heads+neurons", trainer="magnitude", head_rate=0.5, gradual_updates=2,
                    gradual_start=0.3)
    proc = run_script("bert.py", tiny_args(tiny_bert_config, sst2_slice, tmp_path, run_name="g", **settings))
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads((tmp_path / "g" / "results.json").read_text())
    p = res["pruning"]
    assert p["gradual"]["done"] == 2 and len(p["gradual"]["fingerprints"]) == 2
    assert p["structure"]["heads_kept"] and [len(h) for h in p["structure"]["heads_kept"]] == [1, 1]
    assert sum(p["structure"]["neurons_kept_per_layer"]) == 128 - round(0.4 * 128)
    assert sum(p["removed_units"].values()) == 2 + round(0.4 * 128)


def test_a_gradual_run_killed_between_updates_resumes_exactly(tiny_bert_config, sst2_slice, tmp_path):
    reference = reference_run(tiny_bert_config, sst2_slice, tmp_path / "reference", GRADUAL)
    resumed = kill_and_resume(tiny_bert_config, sst2_slice, tmp_path / "killed", GRADUAL, 11, 9, "retrain")
    same_run(reference, resumed)
    assert resumed[0]["pruning"]["gradual"] == reference[0]["pruning"]["gradual"]


@pytest.mark.parametrize("extra,message", [
    (dict(trainer="slimming", granularity="heads+neurons", gradual_updates=2), "use magnitude"),
    (dict(gradual_updates=-1), "GRADUAL_UPDATES must be a whole number"),
    (dict(gradual_updates=2, gradual_span=0), "GRADUAL_SPAN"),
    (dict(gradual_updates=50), "need at least 50 steps"),
])
def test_bad_gradual_settings_fail_before_training(tiny_bert_config, sst2_slice, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        experiment.main(vars(bert), tiny_args(tiny_bert_config, sst2_slice, tmp_path / "out", **extra))
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
