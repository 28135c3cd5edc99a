"""The layout of a run's results.json, declared once and versioned: `write` checks a results dict against
the declaration and writes it atomically; `read` returns a typed `RunResults` that report.py (through
`pruning.studies.sweep_tables`, `pruning.studies.sweep_plots`), lottery.py, allocate.py and compress.py read instead of string keys.

Versions: 1 is every file written before `schema_version` existed (no such key); its layout is
version 2's less that key, so both read the same way. Version 3 adds the task ("task": its name,
metrics and headline metric; SST-2 for older files), every task's metrics under their standard names,
the other dev sets (MNLI's mismatched), "truncation" and "test_predictions". A field a file lacks reads as None (or as an
empty section): old files, and the synthetic ones of the tests, leave out what they never had. A file
of a version newer than SCHEMA_VERSION, or one that is not a results object, is one `SchemaError`
naming the file and its version. Keys read rarely stay in `RunResults.raw`.

Units: seconds are wall-clock seconds of this process's training (a resumed run: the sum over its
processes); FLOPs are floating-point operations (2 per multiply-add); MB are 2**20 bytes; accuracy, F1,
rates and sparsity are fractions in [0, 1]; correlations (Matthews, Pearson, Spearman) lie in [-1, 1];
steps are optimizer steps.

To add a key: declare it here (with its unit), bump SCHEMA_VERSION if an old file would read it wrongly,
and write it in `pruning.run.experiment.run`; `write` refuses any key that is not declared.
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from pruning.data.tasks import METRIC_TITLES

SCHEMA_VERSION = 3
FILE = "results.json"


class SchemaError(ValueError):
    """A results.json this code cannot read: malformed, or of a newer schema version."""


def _optional(doc: str = "", default=None):
    """A field that `write` lets the dict leave out (e.g. "pruning" of a dense run)."""
    return field(default=default, metadata={"optional": True, "doc": doc})


# --- the declaration -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Metrics:
    """One evaluation on the dev set under the metrics' standard names (None: not evaluated, or not a
    metric of the task); the other dev sets of the task (MNLI: "mismatched") in `other_dev_sets`."""
    accuracy: Optional[float] = None               # fraction correct
    f1: Optional[float] = None                     # F1 of class 1, a fraction
    matthews_correlation: Optional[float] = _optional("CoLA's headline; files before version 3 lack it")
    pearson: Optional[float] = _optional("STS-B's headline (a regression)")
    spearmanr: Optional[float] = _optional("STS-B's second metric")
    loss: Optional[float] = None                   # mean cross-entropy (nats), or mean squared error of a regression
    other_dev_sets: Optional[dict[str, "Metrics"]] = _optional("the same, per other dev set")

    def value(self, name: str) -> Optional[float]:
        """The metric `name` (a standard name, or "loss"); None where not evaluated."""
        return getattr(self, name, None)

    def on(self, dev_set: Optional[str]) -> "Metrics":
        """These metrics (dev_set None, the task's first dev set) or another dev set's (empty if absent)."""
        if dev_set is None:
            return self
        return (self.other_dev_sets or {}).get(dev_set) or Metrics()


@dataclass(frozen=True)
class StageMetrics:
    """Dev metrics by stage; a dense run has only "final"."""
    final: Metrics = field(default_factory=Metrics)   # after training
    before_prune: Optional[Metrics] = _optional("the dense model at the pruning step")
    after_prune: Optional[Metrics] = _optional("the pruned model at the pruning step, not retrained")

    def accuracy(self, stage: str = "final") -> Optional[float]:
        """The accuracy at `stage` ("final", "before_prune", "after_prune"); None where not evaluated."""
        return self.value("accuracy", stage)

    def value(self, name: str, stage: str = "final") -> Optional[float]:
        """The metric `name` at `stage`; None where not evaluated."""
        m = getattr(self, stage)
        return None if m is None else m.value(name)


@dataclass(frozen=True)
class ParameterSplit:
    """Parameter counts (numbers of scalars) of a model, by part."""
    embeddings: Optional[int] = None
    encoder: Optional[int] = None
    head: Optional[int] = None            # pooler + classifier
    total: Optional[int] = None
    without_embeddings: Optional[int] = None


@dataclass(frozen=True)
class Parameters:
    """Parameter counts of the dense model as loaded and of the final model (results.json "parameters")."""
    dense: ParameterSplit = field(default_factory=ParameterSplit)  # the model as loaded
    final: ParameterSplit = field(default_factory=ParameterSplit)  # after training (heads and neurons removed)

    def kept_without_embeddings(self) -> Optional[float]:
        """The fraction of the dense model's parameters, without embeddings, that the final model holds."""
        if self.final.without_embeddings is None or not self.dense.without_embeddings:
            return None
        return self.final.without_embeddings / self.dense.without_embeddings


@dataclass(frozen=True)
class Cost:
    """What training and evaluating cost (results.json "cost"): FLOPs, tokens, and the dev throughput in
    sentences per second."""
    train_flos: Optional[float] = None                 # HF's estimate of the training FLOPs (state.total_flos)
    dev_tokens: Optional[int] = None                   # real tokens in the dev set
    mean_train_tokens: Optional[float] = None          # tokens per training sentence, mean
    train_flops: Optional[float] = None                # training FLOPs as CostLog counted them (pruning.run.training_cost)
    inference_flops_dense: Optional[float] = None      # FLOPs of one pass over the dev set, zeros multiplied
    inference_flops_nonzero: Optional[float] = None    # the same, nonzero weights only
    dev_sentences_per_second: Optional[float] = None   # the final evaluation's throughput


@dataclass(frozen=True)
class Speed:
    """Side by side with a dense model of the same architecture (`pruning.run.measurements.measure_speed`)."""
    threads: Optional[int] = None
    rounds: Optional[int] = None
    batch1_pruned: Optional[float] = None       # sentences per second at batch 1
    batch1_dense: Optional[float] = None
    batch1_ratio: Optional[float] = None        # pruned / dense
    batch64_pruned: Optional[float] = None      # sentences per second at batch 64
    batch64_dense: Optional[float] = None
    batch64_ratio: Optional[float] = None
    train_step_pruned: Optional[float] = None   # seconds per training step (batch of 32)
    train_step_dense: Optional[float] = None
    train_step_ratio: Optional[float] = None    # pruned / dense seconds
    train_step_speedup: Optional[float] = None  # 1 / train_step_ratio


@dataclass(frozen=True)
class EarlyStoppingSummary:
    """`pruning.run.callbacks.EarlyStopping`'s settings and stop (results.json "early_stopping"; steps are
    optimizer steps, losses dev cross-entropy)."""
    patience: Optional[int] = None          # evaluations
    threshold: Optional[float] = None       # dev-loss improvement that counts
    stopped: Optional[bool] = None
    step: Optional[int] = _optional("the step it stopped at")
    phase: Optional[str] = _optional('"search", "retrain" or "dense"')
    best_step: Optional[int] = _optional()
    best_loss: Optional[float] = _optional()
    loss: Optional[float] = _optional("dev loss at the stop")
    reason: Optional[str] = _optional()


@dataclass(frozen=True)
class AccuracyPoint:
    """An evaluation during training (EVAL_EVERY)."""
    step: Optional[int] = None
    train_seconds: Optional[float] = None   # training seconds so far, evaluations left out
    accuracy: Optional[float] = None
    score: Optional[float] = _optional("the task's headline metric (files before version 3: read as accuracy)")

    def value(self) -> Optional[float]:
        """The headline metric at this evaluation (files from before tasks: the accuracy)."""
        return self.accuracy if self.score is None else self.score


@dataclass(frozen=True)
class CostPoint:
    """A training log entry of `pruning.run.training_cost.CostLog`."""
    step: Optional[int] = None
    train_seconds: Optional[float] = None
    tokens_trained: Optional[int] = None
    train_flops: Optional[float] = None                    # FLOPs so far
    forward_flops_at_mean_length: Optional[float] = None   # FLOPs of one forward pass of a mean-length sentence
    active_params: Optional[int] = None
    active_params_without_embeddings: Optional[int] = None
    peak_memory_mb: Optional[float] = None                 # peak so far, MB
    accuracy: Optional[float] = None                       # dev accuracy evaluated at this step, if any
    score: Optional[float] = _optional("the task's headline metric there, if any")


@dataclass(frozen=True)
class DevPredictions:
    """The predicted class and the label of every dev sentence, in the dataset's order."""
    predicted: list = field(default_factory=list)
    label: list = field(default_factory=list)


@dataclass(frozen=True)
class Distillation:
    """The teacher and the loss settings of a distilled retrain phase, and what its logits cost in seconds
    (results.json "distillation"; `pruning.run.distill.cached_logits`)."""
    teacher: Optional[str] = None           # the teacher run's directory
    temperature: Optional[float] = None
    hardness: Optional[float] = None        # weight of the soft loss, a fraction
    cached: Optional[bool] = None
    seconds: Optional[float] = None         # what this run spent on the teacher's logits
    compute_seconds: Optional[float] = None  # what computing them took, cached or not (charged to the run)
    file: Optional[str] = None


@dataclass(frozen=True)
class Detector:
    """The Early-Bird detector's settings (You et al. 2020) as the run used them."""
    window: Optional[int] = None            # masks in the FIFO
    epsilon: Optional[float] = None         # mask distance (fraction of units) below which the early bird is found
    check_every: Optional[int] = None       # steps


@dataclass(frozen=True)
class Structure:
    """What a heads+neurons run kept, per layer (`pruning.run.measurements.structure`)."""
    heads_total_per_layer: list = field(default_factory=list)
    heads_kept: list = field(default_factory=list)              # original indices of the heads kept
    heads_kept_per_layer: list = field(default_factory=list)
    neurons_total_per_layer: list = field(default_factory=list)
    neurons_kept_per_layer: list = field(default_factory=list)
    mlps_kept: Optional[list] = _optional("dense indices of the layers that kept their MLP (runs with MLP_RATE)")
    layers_kept: Optional[list] = _optional("dense indices of the encoder layers kept (runs with LAYER_RATE)")


@dataclass(frozen=True)
class PruningSummary:
    """`PruningTrainer.pruning_summary()` less "evals" (which become `RunResults.metrics`)."""
    criterion: Optional[str] = None
    granularity: Optional[str] = None                 # "weights" or "heads+neurons"
    scope: Optional[str] = None
    rate: Any = None                  # fraction of prunable weights (or per-layer rates); None for heads+neurons
    head_rate: Any = None             # fraction of heads (heads+neurons runs)
    neuron_rate: Any = None           # fraction of FFN neurons
    mlp_rate: Any = _optional("fraction of the layers whose whole MLP is removed (heads+neurons runs)")
    layer_rate: Any = _optional("fraction of the encoder layers removed (heads+neurons runs)")
    eb_found: Optional[bool] = None
    eb_step: Optional[int] = None                     # None: not found, pruned at the end of the search budget
    eb_epoch: Optional[float] = None                  # epochs
    prune_step: Optional[int] = None
    search_steps_budget: Optional[int] = None
    retrain_steps: Optional[int] = None
    steps_per_epoch: Optional[int] = None
    fixed_mask_from: Optional[str] = None             # a fixed-mask run: the masks' source
    gradual: Optional[dict] = None                    # steps, fractions, done, fingerprints of gradual pruning
    detector: Detector = field(default_factory=Detector)
    distance_history: Any = None      # [{"step", "distances", "max_distance"}], or such lists by detector name
    mask_fingerprint: Optional[str] = None
    removed_units: Optional[dict] = None              # units removed, by unit group (heads+neurons)
    skipped_steps: Optional[int] = _optional("optimizer steps with non-finite gradients (fp16 overflow) that added "
                                             "nothing to the scores")
    phase_seconds: Optional[dict] = None              # seconds by phase: search, prune, retrain
    structure: Optional[Structure] = None             # heads+neurons runs
    step_seconds: Optional[dict] = _optional("seconds per step in the search and the retrain phase")

    def distances(self) -> list[dict]:
        """The checks of the detector a sweep plots: the weights' detector, or the first when the run had
        several (one history per detector) and none for weights."""
        history = self.distance_history or []
        if isinstance(history, dict):
            history = history.get("weights") or next(iter(history.values()))
        return history


@dataclass(frozen=True)
class PostTraining:
    """A retraining-free run (prune_finetuned.py; Kwon et al. 2022): its constraint, what the steps took, and
    how far mask tuning brought each layer's output back. FLOPs are of one pass over the sample's sentences."""
    constraint: Optional[float] = None       # the FLOPs budget, a fraction of the input model's
    flops_input: Optional[float] = None      # the input model (FLOPs)
    flops_pruned: Optional[float] = None     # the pruned model (FLOPs)
    sample: Optional[int] = None             # train examples the Fisher information and the tuning read
    rearranged: Optional[bool] = None        # step 2 ran
    tuned: Optional[bool] = None             # step 3 ran
    damping: Optional[float] = None          # of the least-squares solve, relative to its mean diagonal
    step_seconds: Optional[dict] = None      # seconds by step: load, fisher, search, rearrange, tune, apply, evaluate
    tuning: Optional[dict] = None            # group -> {"before", "after"}: relative reconstruction errors, and "used"
    input_run: Optional[str] = None          # the finished run the model came from ("" for a model directory or Hub id)
    recovery: Optional[dict] = None          # RETRAIN_EPOCHS > 0: epochs, examples, steps, seconds, settings, and the
                                             # tuned model's metrics before it ("tuned"); metrics.final is after it


@dataclass(frozen=True)
class TaskInfo:
    """The task of a run (`pruning.data.tasks.Task`, results.json "task"); files from before tasks read as SST-2."""
    name: str = "sst2"
    title: str = "SST-2"
    metrics: list = field(default_factory=lambda: ["accuracy", "f1"])  # standard names, the headline first
    headline: str = "accuracy"
    label_names: Optional[list] = None        # class names in class-id order; None for a regression
    text_columns: list = field(default_factory=lambda: ["sentence"])
    dev_sets: list = field(default_factory=lambda: ["validation"])  # the first is the one trained against


def metric_title(task: TaskInfo) -> str:
    """The headline metric's display name, for column headers: "accuracy", "F1", "Matthews corr.", ..."""
    return METRIC_TITLES.get(task.headline, task.headline)


def dev_metric_label(task: TaskInfo) -> str:
    """The headline as an axis or a table names it: "SST-2 dev accuracy", "CoLA dev Matthews corr.",
    "MNLI dev accuracy (matched)" (the dev set it is measured on, when the task has several)."""
    dev_set = f" ({task.dev_sets[0]})" if len(task.dev_sets) > 1 else ""
    return f"{task.title} dev {metric_title(task)}{dev_set}"


@dataclass(frozen=True)
class Truncation:
    """How inputs were cut to MAX_LENGTH, and how many examples lost tokens (results.json "truncation")."""
    strategy: str = "head"          # "head" or "head+tail"
    max_length: Optional[int] = None  # tokens
    train: int = 0                  # train examples truncated
    dev: dict = field(default_factory=dict)  # dev set -> examples truncated


@dataclass(frozen=True)
class RunConfig:
    """The run's settings as recorded (`settings`: every --key of its script, TRAINER by name); the
    properties are those the readers use."""
    settings: dict = field(default_factory=dict)

    @property
    def seed(self) -> Optional[int]:
        """SEED, or None when not recorded."""
        return self.settings.get("SEED")

    @property
    def max_length(self) -> Optional[int]:
        """MAX_LENGTH in tokens, or None when not recorded."""
        return self.settings.get("MAX_LENGTH")  # tokens

    @property
    def granularity(self) -> str:
        """GRANULARITY; "weights" when not recorded."""
        return self.settings.get("GRANULARITY", "weights")

    @property
    def data_dir(self) -> str:
        """DATA_DIR; "" when not recorded."""
        return self.settings.get("DATA_DIR", "")

    @property
    def teacher(self) -> str:
        """TEACHER (a run directory); "" when none."""
        return self.settings.get("TEACHER") or ""

    @property
    def gradual_updates(self) -> int:
        """GRADUAL_UPDATES (mask updates after the early bird); 0 when none."""
        return self.settings.get("GRADUAL_UPDATES") or 0

    @property
    def gradual_rewarm(self) -> bool:
        """GRADUAL_REWARM; False when not recorded."""
        return bool(self.settings.get("GRADUAL_REWARM"))


@dataclass(frozen=True)
class RunResults:
    """A run's results.json. Every field but `raw` and `source` is a key of the file."""
    schema_version: int = 1
    script: Optional[str] = None               # bert.py, roberta.py, ...
    run_dir: Optional[str] = None
    trainer: Optional[str] = None              # "dense" or the criterion's trainer name
    model: Optional[str] = None                # a description of the model
    model_source: Optional[str] = None         # MODEL as given
    task: TaskInfo = field(default_factory=TaskInfo)
    data: Optional[str] = None                 # where the data came from
    train_rows: Optional[int] = None           # sentences trained on
    dev_rows: Optional[int] = None             # of the first dev set
    truncation: Optional[Truncation] = None
    test_predictions: Optional[dict] = None    # test split -> the file of its predictions (PREDICT_TEST)
    config: RunConfig = field(default_factory=RunConfig)
    world_size: Optional[int] = None           # processes
    optimizer_steps: Optional[int] = None
    metrics: StageMetrics = field(default_factory=StageMetrics)
    total_params: Optional[int] = None
    nonzero_params: Optional[int] = None
    parameters: Parameters = field(default_factory=Parameters)
    prunable_params: Optional[int] = None
    prunable_nonzero: Optional[int] = None
    sparsity: Optional[float] = None           # fraction of prunable weights that are exactly zero
    train_seconds: Optional[float] = None      # trainer.train() in this process
    peak_rss_mb: Optional[float] = None        # MB
    cost: Cost = field(default_factory=Cost)
    speed: Optional[Speed] = None              # MEASURE_SPEED runs
    date: Optional[str] = None                 # ISO 8601, seconds
    versions: Optional[dict] = None            # of torch and transformers
    log_history: list = field(default_factory=list)   # HF's state.log_history: free-form entries
    accuracy_timeline: list[AccuracyPoint] = field(default_factory=list)
    cost_series: list[CostPoint] = field(default_factory=list)
    early_stopping: Optional[EarlyStoppingSummary] = None
    dev_predictions: Optional[DevPredictions] = None   # None: not saved (runs from before, or out of order)
    distillation: Optional[Distillation] = None
    phase_seconds: dict = field(default_factory=dict)  # seconds by phase (dense: "train"; "teacher" if distilled)
    pruning: Optional[PruningSummary] = _optional("pruning runs only")
    post_training: Optional[PostTraining] = _optional("retraining-free runs (prune_finetuned.py) only")
    raw: dict = field(default_factory=dict, repr=False, compare=False, metadata={"file": False})

    @property
    def headline(self) -> str:
        """The task's headline metric: the one every study reports."""
        return self.task.headline

    def score(self, stage: str = "final") -> Optional[float]:
        """The headline metric at `stage` on the first dev set; None where not evaluated."""
        return self.metrics.value(self.headline, stage)
    source: Optional[str] = field(default=None, repr=False, compare=False, metadata={"file": False})


# --- reading -----------------------------------------------------------------------------------------
def _declared(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("file", True)}


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _section(hint):
    """(kind, dataclass) of a declared type: ("one", C) for C or Optional[C], ("list", C) for list[C],
    ("dict", C) for dict[str, C], else (None, None)."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else hint
    if dataclasses.is_dataclass(hint):
        return "one", hint
    if typing.get_origin(hint) is list and typing.get_args(hint) and dataclasses.is_dataclass(typing.get_args(hint)[0]):
        return "list", typing.get_args(hint)[0]
    if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[-1]):
        return "dict", typing.get_args(hint)[-1]
    return None, None


def _parse(cls, data, where: str):
    if cls is RunConfig:
        if not isinstance(data, dict):
            raise TypeError(f"{where}: expected an object, got {type(data).__name__}")
        return RunConfig(settings=data)
    if not isinstance(data, dict):
        raise TypeError(f"{where}: expected an object, got {type(data).__name__}")
    hints, values = _hints(cls), {}
    for name in _declared(cls):
        if name not in data or data[name] is None:
            continue
        kind, inner = _section(hints[name])
        value = data[name]
        if kind == "one":
            value = _parse(inner, value, f"{where}.{name}")
        elif kind == "list":
            if not isinstance(value, list):
                raise TypeError(f"{where}.{name}: expected a list, got {type(value).__name__}")
            value = [_parse(inner, v, f"{where}.{name}[{i}]") for i, v in enumerate(value)]
        elif kind == "dict":
            if not isinstance(value, dict):
                raise TypeError(f"{where}.{name}: expected an object, got {type(value).__name__}")
            value = {k: _parse(inner, v, f"{where}.{name}.{k}") for k, v in value.items()}
        values[name] = value
    return cls(**values)


def parse(data: dict, source: str | Path | None = None) -> RunResults:
    """The typed results of a results dict (as read from a file, or as `experiment.run` returns it).
    Raises SchemaError (a ValueError) for a non-dict, a bad or too new schema_version, or a section of
    the wrong type."""
    where = str(source) if source is not None else "results"
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: not a run's results (a JSON object), but {type(data).__name__}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise SchemaError(f"{where}: schema_version {version!r} is not a version (a whole number >= 1)")
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema_version {version} is newer than this code reads (up to "
                          f"{SCHEMA_VERSION}); read it with the version of the code that wrote it, or update this one")
    try:
        results = _parse(RunResults, {**data, "schema_version": version}, "results")
    except TypeError as e:
        raise SchemaError(f"{where} (schema_version {version}) is malformed: {e}") from None
    return dataclasses.replace(results, raw=data, source=None if source is None else str(source))


def read(path: str | Path) -> RunResults:
    """The typed results of a run: its directory, or its results.json. Raises SchemaError for a file
    that is not JSON or that `parse` refuses, and FileNotFoundError when there is no file."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise SchemaError(f"{path} is malformed (schema_version unknown): not JSON ({e})") from None
    return parse(data, path)


# --- writing -----------------------------------------------------------------------------------------
def check(data: dict, cls=RunResults, where: str = "results") -> None:
    """ValueError naming the first key `data` holds that `cls` does not declare, or a declared key it
    lacks (one `_optional` field may be left out); nested sections are checked the same way."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a dict, got {type(data).__name__}")
    if cls is RunConfig:
        return  # the script's settings: declared by pruning.settings
    declared, hints = _declared(cls), _hints(cls)
    unknown = sorted(set(data) - set(declared))
    if unknown:
        raise ValueError(f"{where}: undeclared key(s) {', '.join(map(repr, unknown))}: declare them in "
                         f"pruning/run/schema.py ({cls.__name__}) before writing them")
    missing = [n for n, f in declared.items() if n not in data and not f.metadata.get("optional")]
    if missing:
        raise ValueError(f"{where}: declared key(s) {', '.join(map(repr, missing))} missing ({cls.__name__})")
    for name, value in data.items():
        kind, inner = _section(hints[name])
        if value is None or kind is None:
            continue
        if kind == "one":
            check(value, inner, f"{where}.{name}")
        elif kind == "dict":
            for k, v in value.items():
                check(v, inner, f"{where}.{name}.{k}")
        else:
            for i, v in enumerate(value):
                check(v, inner, f"{where}.{name}[{i}]")


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temporary file beside `path`, then os.replace."""
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write(path: str | Path, results: dict) -> dict:
    """Stamp `results` with SCHEMA_VERSION, check it against the declaration (ValueError naming an
    undeclared or missing key) and write it to `path` (a run directory or its results.json) atomically.
    Returns the dict as written."""
    path = Path(path)
    if path.is_dir():
        path = path / FILE
    stamped = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in results.items() if k != "schema_version"}}
    check(stamped)
    write_json(path, stamped)
    return stamped
