"""RunState without training: phase changes charge the phase being left, derived values, and the
round trip through a checkpoint's dict (also from the record dict of checkpoints before RunState)."""
import json

import pytest

from pruning.run.run_state import GradualSchedule, Prune, RunState, UpdateMask


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_enter_charges_the_phase_being_left():
    clock = FakeClock()
    run = RunState(clock=clock)
    run.enter("prune")                      # the clock has not started: nothing is charged
    assert run.phase_seconds == {"search": 0.0, "prune": 0.0, "retrain": 0.0}
    run.phase = "search"
    run.start_clock()
    clock.now += 5
    run.enter("prune")
    clock.now += 2
    run.enter("retrain")
    clock.now += 3
    run.charge()
    assert run.phase == "retrain" and run.phase_seconds == {"search": 5.0, "prune": 2.0, "retrain": 3.0}


def test_time_while_restarting_is_charged_to_pruning_until_training_starts_again():
    clock = FakeClock()
    run = RunState(phase="retrain", clock=clock)
    run.start_clock()
    run.restarting = True
    clock.now += 4
    run.charge()                            # writing the pruning checkpoint
    clock.now += 1
    run.start_clock()                       # the continuation on the smaller model
    assert not run.restarting
    clock.now += 6
    run.charge()
    assert run.phase_seconds == {"search": 0.0, "prune": 5.0, "retrain": 6.0}


def test_enter_refuses_an_unknown_phase():
    with pytest.raises(ValueError, match="unknown phase"):
        RunState().enter("finetune")


def test_derived_values():
    run = RunState()
    assert run.eb_step is None and run.lr_peak_step is None
    run.prune_step, run.eb_found, run.lr_restart_step = 12, True, 20   # a gradual re-warm moved the restart
    assert run.eb_step == 12 and run.lr_peak_step == 12
    run.eb_found = False                    # the search budget ran out
    assert run.eb_step is None and run.lr_peak_step == 12
    run.phase, run.stop_step = "retrain", 30
    assert not run.retrain_budget_spent(29) and run.retrain_budget_spent(30)
    run.gradual = GradualSchedule([15, 18], [0.5, 0.8, 1.0])
    assert run.gradual_pending().next_step == 15
    run.gradual.done = 2
    assert run.gradual_pending() is None and run.gradual.next_step is None


def test_removed_units_accumulate():
    run = RunState()
    run.record_removed({"a": 2, "b": 1})
    run.record_removed({"a": 1, "b": 0})
    assert run.removed_units == {"a": 3, "b": 1}


def full_state() -> RunState:
    return RunState(phase="retrain", eb_found=True, prune_step=6, stop_step=20, lr_restart_step=9,
                    gradual=GradualSchedule([9, 12], [0.5, 0.9, 1.0], 1, ["ab"]), search_steps=10,
                    retrain_steps=14, first_check_after=2, steps_per_epoch=5.0,
                    evals={"before_prune": {"eval_loss": 0.7}, "after_prune": {"eval_loss": 0.8}},
                    mask_fingerprint="ab", removed_units={"layer.0": 3}, restarting=True,
                    phase_seconds={"search": 1.5, "prune": 0.5, "retrain": 2.0})


def test_dict_round_trip_through_json():
    run = full_state()
    saved = json.loads(json.dumps(run.to_dict()))
    assert "clock" not in saved and "eb_step" not in saved
    assert RunState.from_dict(saved) == run
    other = RunState()
    holder = other
    other.load(saved)                       # in place: those holding the state see the loaded one
    assert holder == run


def test_reads_the_record_dict_of_checkpoints_before_run_state():
    old = {"phase": "retrain", "eb_found": True, "eb_step": 6, "prune_step": 6, "stop_step": 20,
           "lr_restart_step": 9, "lr_peak_step": 6,
           "gradual": {"steps": [9, 12], "fractions": [0.5, 0.9, 1.0], "done": 1, "fingerprints": ["ab"]},
           "fixed_mask_from": None, "search_steps": 10, "retrain_steps": 14, "first_check_after": 2,
           "steps_per_epoch": 5.0, "evals": {"before_prune": {"eval_loss": 0.7}, "after_prune": {"eval_loss": 0.8}},
           "mask_fingerprint": "ab", "removed_units": {"layer.0": 3}, "restarting": True,
           "phase_seconds": {"search": 1.5, "prune": 0.5, "retrain": 2.0}}
    assert RunState.from_dict(old) == full_state()
    older = {k: v for k, v in old.items() if k not in ("gradual", "lr_peak_step", "restarting")}
    run = RunState.from_dict(older)         # before gradual pruning and restarts: their defaults
    assert run.gradual is None and not run.restarting and run.lr_peak_step == 6


def test_from_dict_refuses_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        RunState.from_dict({"phase": "search", "lr_floor": 0.1})


def test_a_decision_is_taken_once_and_two_at_once_are_refused():
    run = RunState()
    assert run.take_decision() is None
    run.decide(UpdateMask())
    with pytest.raises(RuntimeError, match="still pending"):
        run.decide(Prune({}, True))
    assert run.take_decision() == UpdateMask() and run.take_decision() is None
    assert "_decision" not in run.to_dict()
