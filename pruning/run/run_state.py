"""The state of a pruning run: its phase, the steps that shape it, what pruning did and the wall time
of each phase. `PruningTrainer` holds one `RunState`; it is saved in every checkpoint's pruning state
(`to_dict`) and restored from it (`from_dict`, which also reads the record dict that checkpoints
written before this class hold).

The state owns phase changes: `enter(phase)` charges the wall time since the last charge to the
phase being left, then switches. Values that follow from others are properties (`eb_step`,
`lr_peak_step`), never stored.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Callable

PHASES = ("search", "prune", "retrain")
# The record dict of earlier checkpoints held these derived values too; from_dict drops them.
_OLD_DERIVED_KEYS = ("eb_step", "lr_peak_step")
_UNSAVED = {"clock", "_charged_at", "_decision"}  # RunState's fields that are not part of a checkpoint


@dataclass
class GradualSchedule:
    """The mask updates of gradual pruning, set at the pruning step.

    `steps`: the global steps of the updates; `fractions`: the share of the target rate pruned at the
    early bird (first entry) and after each update; `done`: updates applied so far; `fingerprints`:
    the mask fingerprint after each applied update."""
    steps: list[int]
    fractions: list[float]
    done: int = 0
    fingerprints: list[str] = field(default_factory=list)

    @property
    def next_step(self) -> int | None:
        """The global step of the next update, or None once all are done."""
        return self.steps[self.done] if self.done < len(self.steps) else None


@dataclass
class Prune:
    """Decision: prune to `masks` (original-space keep-masks) now; `found`: the early bird settled."""
    masks: dict
    found: bool


@dataclass
class UpdateMask:
    """Decision: the gradual schedule's next mask update is due now."""


@dataclass
class RunState:
    """Where a pruning run stands. Steps are global optimizer steps; seconds are wall-clock seconds.

    phase: "search" (dense training while the Early-Bird detectors watch), "prune" (evaluating and
    pruning, at a single step) or "retrain". eb_found: whether the detectors settled (None before
    pruning; False when the search budget ran out). prune_step: the step the mask was applied at (0
    for a fixed mask). stop_step: the step the retrain phase ends at. lr_restart_step: the step the
    learning rate starts its final linear decay from (pruning, or the last gradual update when
    re-warming). search_steps, retrain_steps, first_check_after (steps) and steps_per_epoch: the
    plan's numbers. evals: the evaluations just before and after pruning. restarting: a structured
    run is writing its pruning checkpoint to continue from (its time is charged to "prune").
    skipped_steps: optimizer steps whose gradients the criterion did not read because they were not all
    finite (the steps an fp16 loss scaler skips), while it read gradients (search, gradual updates).

    `clock` (seconds, monotonic) is injectable for tests; it and the time of the last charge are not
    saved.
    """
    phase: str = "search"
    eb_found: bool | None = None
    prune_step: int | None = None
    stop_step: int | None = None
    lr_restart_step: int | None = None
    gradual: GradualSchedule | None = None
    fixed_mask_from: str | None = None
    search_steps: int | None = None
    retrain_steps: int | None = None
    first_check_after: int = 0
    steps_per_epoch: float | None = None
    evals: dict = field(default_factory=dict)
    mask_fingerprint: str | None = None
    removed_units: dict[str, int] | None = None
    restarting: bool = False
    skipped_steps: int = 0
    phase_seconds: dict[str, float] = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    clock: Callable[[], float] = field(default=time.perf_counter, repr=False, compare=False)
    _charged_at: float | None = field(default=None, init=False, repr=False, compare=False)
    _decision: Prune | UpdateMask | None = field(default=None, init=False, repr=False, compare=False)

    # --- derived ---------------------------------------------------------------------------------
    @property
    def eb_step(self) -> int | None:
        """The step the early bird was found at (the pruning step), or None if it was not found."""
        return self.prune_step if self.eb_found else None

    @property
    def lr_peak_step(self) -> int | None:
        """The step whose dense-schedule learning rate the final decay starts from: always the pruning
        step (a gradual re-warm moves `lr_restart_step`, not the peak); None before pruning."""
        return self.prune_step

    @property
    def searching(self) -> bool:
        """True in the search phase (dense training while the detectors watch)."""
        return self.phase == "search"

    @property
    def retraining(self) -> bool:
        """True in the retrain phase."""
        return self.phase == "retrain"

    def gradual_pending(self) -> GradualSchedule | None:
        """The gradual schedule while the retrain phase still has mask updates to come, else None."""
        if self.retraining and self.gradual is not None and self.gradual.next_step is not None:
            return self.gradual
        return None

    def retrain_budget_spent(self, step: int) -> bool:
        """Whether the retrain phase has had its steps once `step` steps are finished."""
        return self.retraining and self.stop_step is not None and step >= self.stop_step

    # --- decisions of this step -----------------------------------------------------------------
    def decide(self, decision: Prune | UpdateMask) -> None:
        """Leave a decision for the trainer to carry out at the end of this step (never saved: it is
        taken in the same `on_step_end`). Raises RuntimeError if one is pending already."""
        if self._decision is not None:
            raise RuntimeError(f"{decision} decided while {self._decision} is still pending")
        self._decision = decision

    def take_decision(self) -> Prune | UpdateMask | None:
        """The pending decision, or None; it is no longer pending."""
        decision, self._decision = self._decision, None
        return decision

    # --- phases and their wall time --------------------------------------------------------------
    def start_clock(self) -> None:
        """Training (re)starts: time since the last charge, if the clock runs already (the continuation
        of a structured run after its pruning checkpoint), is charged; the restart is over."""
        if self._charged_at is not None:
            self.charge()
        self._charged_at = self.clock()
        self.restarting = False

    def charge(self) -> None:
        """Add the seconds since the last charge to the current phase ("prune" while `restarting`:
        writing the pruning checkpoint and continuing from it is part of pruning). Nothing is charged
        before `start_clock`."""
        if self._charged_at is None:
            return
        now = self.clock()
        self.phase_seconds["prune" if self.restarting else self.phase] += now - self._charged_at
        self._charged_at = now

    def enter(self, phase: str) -> None:
        """Charge the time so far to the phase being left, then switch to `phase`.
        Raises ValueError for a phase not in PHASES."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; one of {PHASES}")
        self.charge()
        self.phase = phase

    def record_removed(self, removed: dict[str, int]) -> None:
        """Add units removed by structured pruning (per group) to those removed before."""
        previous = self.removed_units or {}
        self.removed_units = {n: previous.get(n, 0) + r for n, r in removed.items()}

    # --- serialisation ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The saved fields as plain JSON-able values (not the clock)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _UNSAVED}
        out["gradual"] = asdict(self.gradual) if self.gradual is not None else None
        out["evals"], out["phase_seconds"] = dict(self.evals), dict(self.phase_seconds)
        return out

    @classmethod
    def from_dict(cls, d: dict, clock: Callable[[], float] = time.perf_counter) -> "RunState":
        """The state `to_dict` wrote, or the record dict of a checkpoint written before RunState (its
        derived keys eb_step and lr_peak_step are dropped; keys it lacks take their defaults).
        Raises ValueError for a key neither layout has."""
        saved = {f.name for f in fields(cls)} - _UNSAVED
        d = {k: v for k, v in d.items() if k not in _OLD_DERIVED_KEYS}
        unknown = sorted(set(d) - saved)
        if unknown:
            raise ValueError(f"run state has unknown keys {unknown}; it was written by other code")
        d = dict(d)
        if d.get("gradual") is not None:
            d["gradual"] = GradualSchedule(**d["gradual"])
        return cls(**d, clock=clock)

    def load(self, d: dict) -> None:
        """Replace the saved fields in place by those of `d` (see `from_dict`); the clock keeps running,
        and those holding this state see the loaded one."""
        loaded = self.from_dict(d, self.clock)
        for f in fields(self):
            if f.name not in _UNSAVED:
                setattr(self, f.name, getattr(loaded, f.name))
