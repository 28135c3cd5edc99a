"""What to prune and when: one dataclass, validated on construction, and the PruningConfig a script's constants
describe (`pruning_config`, `describe`)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch

from earlybird import EarlyBirdDetector
from pruning.core import masks as mask_ops
from pruning.core.units import GRANULARITIES, PrunableUnits, WHOLE_KINDS
from pruning.run.distill import check_settings as check_distillation
from pruning.run.hidden_distill import check_settings as check_hidden
from pruning.settings import rate_text

REWIND_POINTS = ("pretrained", "early_bird")
# A whole kind's rate: one fraction of the layers, chosen by score; or one value per encoder layer, each 0 or 1
# (1: that layer's MLP, or the layer, goes), which is how a per-layer allocation (allocate.py's agent) names them.
WholeRate = float | tuple[float, ...]


@dataclass
class PruningConfig:
    """What to prune and when; rates are fractions in [0, 1) (or one per encoder layer), epochs may be
    fractional. Construction raises ValueError for any invalid field (`check_rate`, `EarlyBirdDetector`,
    `distill.check_settings` and the gradual settings); `check_model` checks what needs the model."""
    granularity: str = "weights"      # "weights" (unstructured) or "heads+neurons" (physically removed)
    rate: mask_ops.Rate = 0.5         # weights: fraction of prunable weights set to zero (or one per layer)
    head_rate: mask_ops.Rate = 1 / 3  # heads+neurons: fraction of the heads removed in each layer
    neuron_rate: mask_ops.Rate = 0.4  # heads+neurons: fraction of the FFN neurons removed
    mlp_rate: WholeRate = 0.0         # heads+neurons: fraction of the layers whose whole FFN (MLP) is removed
    layer_rate: WholeRate = 0.0       # heads+neurons: fraction of the encoder layers removed
    scope: str = "global"             # weights and neurons: one threshold over all, or "layerwise"
    search_epochs: float = 1.0        # budget for the dense search; prune at its end if no early bird
    retrain_epochs: float = 1.0       # training with the mask held fixed, after pruning
    check_every: int = 50             # optimizer steps between Early-Bird checks
    window: int = 5                   # masks in the detector's FIFO
    epsilon: float = 0.1              # distance below which the mask counts as settled
    skip_warmup: bool = True          # no checks (and no score accumulation) during the LR warm-up
    mask_from: str = ""               # a finished run's directory: train its mask, fixed from step 0
    rewind_to: str = "pretrained"     # with mask_from: start from the loaded weights or that run's EB weights
    snapshot_path: str = ""           # write the dense weights at the pruning step here ("" = don't)
    distill: bool = False             # retrain on a teacher's logits (the batches' teacher_logits column)
    distill_temperature: float = 2.0  # softmax temperature of the distillation loss
    distill_hardness: float = 1.0     # weight of the distillation loss; 1 - hardness goes to the labels
    distill_hidden: float = 0.0       # weight of the hidden-state MSE to the online teacher (with distill; pruning.run.hidden_distill)
    distill_layer_map: str = "fixed"  # which student layer matches which teacher layer: "fixed" or "dynamic" (CoFi)
    teacher: str = ""                 # with distill_hidden > 0: the dense teacher run online (TEACHER)
    gradual_updates: int = 0          # mask updates after the early bird up to the target rate (0 = one shot)
    gradual_start: float = 0.5        # the share of the target rate pruned at the early bird
    gradual_span: float = 0.5         # the share of the retrain phase the updates spread over
    gradual_rewarm: bool = False      # at each update the LR returns to its value at pruning, then decays
    criterion_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {self.granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        self.rate, self.head_rate, self.neuron_rate, self.mlp_rate, self.layer_rate = (
            tuple(r) if isinstance(r, list) else r
            for r in (self.rate, self.head_rate, self.neuron_rate, self.mlp_rate, self.layer_rate))
        for what, rate in (("pruning rate", self.rate), ("head rate", self.head_rate),
                           ("neuron rate", self.neuron_rate)):
            mask_ops.check_rate(rate, what)
        for what, rate in (("MLP_RATE", self.mlp_rate), ("LAYER_RATE", self.layer_rate)):
            if isinstance(rate, tuple):
                if not rate or any(isinstance(r, bool) or r not in (0, 1) for r in rate):
                    raise ValueError(f"{what} per layer is one value per encoder layer, each 0 (kept) or 1 "
                                     f"(removed), got {rate!r}")
            elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"{what} is the fraction of the encoder's layers (their MLPs, or the layers "
                                 f"themselves) removed: one number in [0, 1), or one 0/1 per layer; got {rate!r}")
        if self.whole_kinds and self.granularity != "heads+neurons":
            raise ValueError("MLP_RATE and LAYER_RATE remove whole MLPs and layers physically: they need "
                             f"GRANULARITY='heads+neurons' (got {self.granularity!r})")
        if self.whole_kinds and self.gradual_updates:
            raise ValueError("GRADUAL_UPDATES with MLP_RATE or LAYER_RATE is not supported: whole MLPs and layers are "
                             "removed in one shot; set GRADUAL_UPDATES=0 or the whole rates to 0")
        if self.scope not in mask_ops.SCOPES:
            raise ValueError(f"unknown threshold scope {self.scope!r}; choose one of {mask_ops.SCOPES}")
        if not self.search_epochs > 0 or not self.retrain_epochs >= 0:
            raise ValueError(f"search_epochs must be > 0 and retrain_epochs >= 0, got "
                             f"{self.search_epochs} and {self.retrain_epochs}")
        if not isinstance(self.check_every, int) or self.check_every < 1:
            raise ValueError(f"check_every must be a positive number of optimizer steps, got {self.check_every!r}")
        if self.rewind_to not in REWIND_POINTS:
            raise ValueError(f"unknown rewind point {self.rewind_to!r}; choose one of {REWIND_POINTS}")
        EarlyBirdDetector(self.window, self.epsilon)  # validates window and epsilon
        check_distillation(self.distill_temperature, self.distill_hardness)
        check_hidden(self.distill_hidden, self.distill_layer_map)
        if isinstance(self.gradual_updates, bool) or not isinstance(self.gradual_updates, int) or self.gradual_updates < 0:
            raise ValueError(f"GRADUAL_UPDATES must be a whole number >= 0 (0 = prune in one shot), got {self.gradual_updates!r}")
        if self.gradual_updates and not (0 <= self.gradual_start <= 1 and 0 < self.gradual_span <= 1):
            raise ValueError(f"GRADUAL_START must lie in [0, 1] and GRADUAL_SPAN in (0, 1], got {self.gradual_start} "
                             f"and {self.gradual_span}")
        if self.gradual_updates and self.mask_from:
            raise ValueError("GRADUAL_UPDATES raises the rate after an early-bird search; a MASK_FROM run trains a fixed "
                             "mask: set one of them")

    @property
    def whole_kinds(self) -> tuple[str, ...]:
        """The whole unit kinds this config removes: ("mlp",) when mlp_rate > 0, ("layer",) when layer_rate > 0."""
        rates = (("mlp", self.mlp_rate), ("layer", self.layer_rate))
        return tuple(k for k, r in rates if any(r if isinstance(r, tuple) else (r,)))

    @property
    def total_epochs(self) -> float:
        """search_epochs + retrain_epochs: the num_train_epochs the trainer needs."""
        return self.search_epochs + self.retrain_epochs

    def scaled(self, fraction: float) -> "PruningConfig":
        """The same config with every rate multiplied by `fraction` (a step of a gradual schedule); per-layer
        whole rates (0 or 1 per layer) cannot be scaled and stay (gradual schedules refuse whole kinds)."""
        def scale(rate):
            return tuple(r * fraction for r in rate) if isinstance(rate, tuple) else rate * fraction
        return replace(self, rate=scale(self.rate), head_rate=scale(self.head_rate),
                       neuron_rate=scale(self.neuron_rate),
                       mlp_rate=self.mlp_rate if isinstance(self.mlp_rate, tuple) else scale(self.mlp_rate),
                       layer_rate=self.layer_rate if isinstance(self.layer_rate, tuple) else scale(self.layer_rate))

    def rate_of(self, kind: str) -> mask_ops.Rate:
        """The rate for a unit kind: "weight" -> rate, "head" -> head_rate, "neuron" -> neuron_rate,
        "mlp" -> mlp_rate, "layer" -> layer_rate (KeyError for another kind)."""
        return {"weight": self.rate, "head": self.head_rate, "neuron": self.neuron_rate, "mlp": self.mlp_rate,
                "layer": self.layer_rate}[kind]

    def check_model(self, units: PrunableUnits) -> None:
        """Errors that need the model: per-layer rate counts, a head rate that empties a layer, a layer rate
        that removes every layer (or, per layer, a layer 0 the family keeps: `Layout.first_layer_stays`).
        Raises ValueError for any of them."""
        for kind in units.kinds():
            rate = self.rate_of(kind)
            groups = [g for g in units.mask_groups.values() if g.kind == kind]
            if kind in WHOLE_KINDS:
                n, what = groups[0].size, kind.upper() + "_RATE"
                if isinstance(rate, tuple) and len(rate) != n:
                    raise ValueError(f"{len(rate)} per-layer {what} values given, but the model has {n} encoder "
                                     "layers: give one 0/1 per layer")
                if kind != "layer":
                    continue
                if (sum(rate) if isinstance(rate, tuple) else round(rate * n)) >= n:
                    raise ValueError(f"LAYER_RATE {rate} would remove all {n} encoder layers; keep at least one")
                if isinstance(rate, tuple) and rate[0] and units.layout.first_layer_stays:
                    raise ValueError(f"LAYER_RATE {rate} removes layer 0, which {units.layout.model_types[0]} builds "
                                     "unlike the others and always keeps: set its value to 0")
                continue
            layers = sorted({g.layer for g in groups})
            if isinstance(rate, tuple) and len(rate) != len(layers):
                raise ValueError(f"{len(rate)} per-layer {kind} rates given, but the model has {len(layers)} "
                                 "encoder layers: give one rate per layer")
            if kind == "head":
                for g in groups:
                    r = rate[g.layer] if isinstance(rate, tuple) else rate
                    if round(r * g.size) >= g.size:
                        raise ValueError(f"head rate {r:g} would remove all {g.size} heads of layer {g.layer} "
                                         f"(round({r:g} x {g.size}) = {round(r * g.size)}); at least one head must "
                                         f"stay: use a head rate below {(g.size - 0.5) / g.size:.4f}")

    def select(self, units: PrunableUnits, scores: dict[str, torch.Tensor],
               current: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Original-space keep-masks of every mask group: heads per layer (one always stays), FFN neurons and
        weights by `scope` (one neuron of each layer always stays), whole MLPs and layers over the model (one
        layer always stays); then what whole MLPs and layers remove is carried down to their units
        (`PrunableUnits.compose`). Each kind is selected from its own scores at its own rate. Units that
        `current` (the masks already applied) has pruned stay pruned. `scores`: group -> float tensor of the
        dense group's shape (-inf: removed); returns group -> bool tensor of that shape (`masks.select`)."""
        out, groups = {}, units.mask_groups
        for kind in units.kinds():
            names = [n for n, g in groups.items() if g.kind == kind]
            if kind in WHOLE_KINDS and isinstance(self.rate_of(kind), tuple):  # these layers, whatever their scores
                out.update({n: torch.tensor([not r for r in self.rate_of(kind)]) for n in names})
                continue
            out.update(mask_ops.select({n: scores[n] for n in names}, self.rate_of(kind),
                                       "layerwise" if kind == "head" else "global" if kind in WHOLE_KINDS
                                       else self.scope,
                                       min_keep={"weight": 0, "mlp": 0}.get(kind, 1),
                                       layers={n: groups[n].layer for n in names}))
        if current is not None:
            out = {n: out[n] & current[n].to(out[n].device) for n in groups}
        return units.compose({n: out[n] for n in groups})


def criterion_options(config: dict) -> dict:
    """The criterion's own settings, by naming convention: constructor argument `epsilon` of the
    criterion named "undecayed" is the constant UNDECAYED_EPSILON (likewise SLIMMING_L1)."""
    criterion = getattr(config["TRAINER"], "criterion_class", None)
    if criterion is None:  # the dense baseline
        return {}
    names = list(inspect.signature(criterion.__init__).parameters)[2:]  # after self, units
    return {n: config[f"{criterion.name}_{n}".upper()] for n in names if f"{criterion.name}_{n}".upper() in config}


# Script constant -> PruningConfig field. A script without some of them (e.g. a copy of bert.py from
# before they existed) gets PruningConfig's defaults.
PRUNING_SETTINGS = {"GRANULARITY": "granularity", "PRUNING_RATE": "rate", "HEAD_RATE": "head_rate",
                    "NEURON_RATE": "neuron_rate", "MLP_RATE": "mlp_rate", "LAYER_RATE": "layer_rate", "THRESHOLD": "scope", "SEARCH_EPOCHS": "search_epochs",
                    "RETRAIN_EPOCHS": "retrain_epochs", "EB_CHECK_EVERY": "check_every", "EB_WINDOW": "window",
                    "EB_EPSILON": "epsilon", "EB_SKIP_WARMUP": "skip_warmup", "MASK_FROM": "mask_from",
                    "REWIND_TO": "rewind_to", "DISTILL_TEMPERATURE": "distill_temperature",
                    "DISTILL_HARDNESS": "distill_hardness", "GRADUAL_UPDATES": "gradual_updates",
                    "GRADUAL_START": "gradual_start", "GRADUAL_SPAN": "gradual_span", "GRADUAL_REWARM": "gradual_rewarm",
                    "DISTILL_HIDDEN": "distill_hidden", "DISTILL_LAYER_MAP": "distill_layer_map"}


def pruning_config(config: dict) -> PruningConfig:
    """The PruningConfig the script's constants describe (PRUNING_SETTINGS; missing ones take its
    defaults). Raises ValueError as PruningConfig does for invalid values."""
    return PruningConfig(**{field: config[key] for key, field in PRUNING_SETTINGS.items() if key in config},
                         distill=bool(config.get("TEACHER")), criterion_options=criterion_options(config),
                         teacher=config.get("TEACHER", "") if config.get("DISTILL_HIDDEN") else "")  # online teacher


def describe(pruning: PruningConfig) -> str:
    """One line saying what is pruned: the rate(s) and scope, and the MASK_FROM source of a fixed mask."""
    if pruning.granularity == "weights":
        text = f"pruning rate {rate_text(pruning.rate)} ({pruning.scope})"
    else:
        text = (f"heads {rate_text(pruning.head_rate)} per layer, FFN neurons {rate_text(pruning.neuron_rate)} "
                f"({pruning.scope})")
        text += "".join(f", whole {kind}s {rate_text(pruning.rate_of(kind))}" for kind in pruning.whole_kinds)
    return text + (f", fixed mask from {pruning.mask_from}" if pruning.mask_from else "")
