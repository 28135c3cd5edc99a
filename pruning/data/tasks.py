"""The tasks a run can train on: the nine GLUE tasks, IMDB, and "custom" (any labelled text data).

A `Task` declares what the rest of the toolkit needs and nothing else: its text columns (one, or a
pair), its labels (class names, or None for a regression), the files of its official distribution and
their layout, its Hub dataset, its dev and test splits, and its metrics with one headline metric that
every table, plot, paired test, reward and compress row reports.

Sources: the GLUE benchmark (Wang et al. 2019; the files of its download script, https://gluebenchmark.com)
and the Hub's `nyu-mll/glue`, whose column names and label order are used here, so a model trained from
the files and one trained from the Hub agree on what class 0 is; IMDB (Maas et al. 2011): `aclImdb/` or
the Hub's `stanfordnlp/imdb`. Metrics are scikit-learn's and scipy's.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

# --- metrics -----------------------------------------------------------------------------------------
# Standard names (those of HF's `evaluate` GLUE metric), each a fraction or a correlation in [-1, 1].
METRIC_TITLES = {"accuracy": "accuracy", "f1": "F1", "matthews_correlation": "Matthews corr.",
                 "pearson": "Pearson r", "spearmanr": "Spearman ρ"}


def compute_metrics(names: tuple[str, ...], predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """`names` computed on `predictions` against `labels` (both shape (n,): class ids, or floats for
    pearson/spearmanr), with scikit-learn and scipy. F1 is of class 1 (binary tasks). A correlation
    that is undefined (a constant vector) is NaN. Raises ValueError for an unknown name."""
    from scipy import stats
    from sklearn import metrics as sk
    out = {}
    for name in names:
        if name == "accuracy":
            out[name] = float(sk.accuracy_score(labels, predictions))
        elif name == "f1":
            out[name] = float(sk.f1_score(labels, predictions, zero_division=0.0))
        elif name == "matthews_correlation":
            out[name] = float(sk.matthews_corrcoef(labels, predictions))
        elif name in ("pearson", "spearmanr"):
            constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0
            fn = stats.pearsonr if name == "pearson" else stats.spearmanr
            out[name] = float("nan") if constant else float(fn(predictions, labels)[0])
        else:
            raise ValueError(f"unknown metric {name!r}; known: {', '.join(METRIC_TITLES)}")
    return out


def predictions_of(logits: np.ndarray) -> np.ndarray:
    """(n,) predictions from logits (n, num_labels): class ids (argmax), or a regression head's values
    (float64) when num_labels is 1."""
    logits = np.asarray(logits)
    return logits.reshape(-1).astype(np.float64) if logits.shape[-1] == 1 else logits.argmax(-1)


# --- the declaration ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One file of a task's distribution: its name in the task's folder, its header (None: the file has
    none, and `columns` are positions), and where each of our columns is (a header name or a position)."""
    file: str
    header: Optional[tuple[str, ...]]
    columns: dict                 # our column -> the file's column name (or 0-based position when header is None)
    fields: Optional[int] = None  # fields per row of a headerless file


@dataclass(frozen=True)
class Task:
    """What a run needs to know about a task. `label_names` None means a regression (num_labels=1);
    `file_labels` are the labels as the distribution's files (and the leaderboard) write them, in
    the order of `label_names` (class id i is file_labels[i])."""
    name: str
    title: str                                  # as papers write it: "SST-2", "MNLI", ...
    text_columns: tuple[str, ...]               # one column, or a pair (tokenized as a pair)
    label_names: Optional[tuple[str, ...]]
    metrics: tuple[str, ...]                    # computed at every evaluation; the first is the headline
    hub: tuple[str, Optional[str]]              # (dataset id, config)
    files: dict = field(default_factory=dict)   # split -> Split: "train", the dev sets, the test sets
    dev_splits: tuple[str, ...] = ("validation",)
    test_splits: tuple[str, ...] = ("test",)
    submission: dict = field(default_factory=dict)  # test split -> the leaderboard's file name
    file_labels: Optional[tuple[str, ...]] = None
    folder: str = ""                            # the task's folder in the GLUE download
    long_documents: bool = False

    @property
    def headline(self) -> str:
        """The metric every study reports (the first of `metrics`)."""
        return self.metrics[0]

    @property
    def num_labels(self) -> int:
        """Outputs of the classifier head: the classes, or 1 for a regression."""
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def dev(self) -> str:
        """The dev set that training evaluates on (MNLI: matched); the others are evaluated beside it."""
        return self.dev_splits[0]

    def predictions(self, logits: np.ndarray) -> np.ndarray:
        """(n,) predictions from logits (n, num_labels): class ids, or the regression's values."""
        return predictions_of(logits)

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        """This task's metrics (`metrics`) of predictions against labels."""
        return compute_metrics(self.metrics, np.asarray(predictions), np.asarray(labels))

    def label_text(self, prediction) -> str:
        """A prediction as the leaderboard's submission file writes it."""
        if self.is_regression:
            return f"{min(5.0, max(0.0, float(prediction))):.3f}"  # STS-B scores lie in [0, 5]
        return (self.file_labels or self.label_names)[int(prediction)]


def _glue(name, title, folder, text_columns, label_names, metrics, train, dev, test, file_labels=None, **kw):
    return Task(name=name, title=title, folder=folder, text_columns=text_columns, label_names=label_names,
                metrics=metrics, hub=("nyu-mll/glue", name), files={"train": train, **dev, **test},
                dev_splits=tuple(dev), test_splits=tuple(test), file_labels=file_labels or
                (None if label_names is None else tuple(str(i) for i in range(len(label_names)))), **kw)


_MNLI_PARSES = ("index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2")
_MNLI_DEV = _MNLI_PARSES + ("label1", "label2", "label3", "label4", "label5", "gold_label")
_STSB = ("index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2")
_MRPC = ("#1 ID", "#2 ID", "#1 String", "#2 String")
_NLI = ("index", "sentence1", "sentence2")


def _nli(file, header, label=True):
    return Split(file, header, {"sentence1": "sentence1", "sentence2": "sentence2",
                                **({"label": "label"} if label else {"index": "index"})})


TASKS: dict[str, Task] = {t.name: t for t in (
    _glue("cola", "CoLA", "CoLA", ("sentence",), ("unacceptable", "acceptable"),
          ("matthews_correlation", "accuracy"),
          Split("train.tsv", None, {"sentence": 3, "label": 1}, fields=4),
          {"validation": Split("dev.tsv", None, {"sentence": 3, "label": 1}, fields=4)},
          {"test": Split("test.tsv", ("index", "sentence"), {"sentence": "sentence", "index": "index"})},
          submission={"test": "CoLA.tsv"}),
    _glue("sst2", "SST-2", "SST-2", ("sentence",), ("negative", "positive"), ("accuracy", "f1"),
          Split("train.tsv", ("sentence", "label"), {"sentence": "sentence", "label": "label"}),
          {"validation": Split("dev.tsv", ("sentence", "label"), {"sentence": "sentence", "label": "label"})},
          {"test": Split("test.tsv", ("index", "sentence"), {"sentence": "sentence", "index": "index"})},
          submission={"test": "SST-2.tsv"}),
    _glue("mrpc", "MRPC", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
          Split("train.tsv", ("Quality",) + _MRPC, {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
          {"validation": Split("dev.tsv", ("Quality",) + _MRPC,
                               {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"})},
          {"test": Split("test.tsv", ("index",) + _MRPC,
                         {"sentence1": "#1 String", "sentence2": "#2 String", "index": "index"})},
          submission={"test": "MRPC.tsv"}),
    _glue("qqp", "QQP", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
          Split("train.tsv", ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
          {"validation": Split("dev.tsv", ("id", "qid1", "qid2", "question1", "question2", "is_duplicate"),
                               {"question1": "question1", "question2": "question2", "label": "is_duplicate"})},
          {"test": Split("test.tsv", ("id", "question1", "question2"),
                         {"question1": "question1", "question2": "question2", "index": "id"})},
          submission={"test": "QQP.tsv"}),
    _glue("stsb", "STS-B", "STS-B", ("sentence1", "sentence2"), None, ("pearson", "spearmanr"),
          Split("train.tsv", _STSB + ("score",), {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
          {"validation": Split("dev.tsv", _STSB + ("score",),
                               {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"})},
          {"test": Split("test.tsv", _STSB, {"sentence1": "sentence1", "sentence2": "sentence2", "index": "index"})},
          submission={"test": "STS-B.tsv"}),
    _glue("mnli", "MNLI", "MNLI", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"),
          ("accuracy",),
          Split("train.tsv", _MNLI_PARSES + ("label1", "gold_label"),
                {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"}),
          {f"validation_{m}": Split(f"dev_{m}.tsv", _MNLI_DEV,
                                    {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"})
           for m in ("matched", "mismatched")},
          {f"test_{m}": Split(f"test_{m}.tsv", _MNLI_PARSES,
                              {"premise": "sentence1", "hypothesis": "sentence2", "index": "index"})
           for m in ("matched", "mismatched")},
          file_labels=("entailment", "neutral", "contradiction"),
          submission={"test_matched": "MNLI-m.tsv", "test_mismatched": "MNLI-mm.tsv"}),
    _glue("qnli", "QNLI", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
          Split("train.tsv", ("index", "question", "sentence", "label"),
                {"question": "question", "sentence": "sentence", "label": "label"}),
          {"validation": Split("dev.tsv", ("index", "question", "sentence", "label"),
                               {"question": "question", "sentence": "sentence", "label": "label"})},
          {"test": Split("test.tsv", ("index", "question", "sentence"),
                         {"question": "question", "sentence": "sentence", "index": "index"})},
          file_labels=("entailment", "not_entailment"), submission={"test": "QNLI.tsv"}),
    _glue("rte", "RTE", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
          _nli("train.tsv", _NLI + ("label",)), {"validation": _nli("dev.tsv", _NLI + ("label",))},
          {"test": _nli("test.tsv", _NLI, label=False)},
          file_labels=("entailment", "not_entailment"), submission={"test": "RTE.tsv"}),
    _glue("wnli", "WNLI", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
          _nli("train.tsv", _NLI + ("label",)), {"validation": _nli("dev.tsv", _NLI + ("label",))},
          {"test": _nli("test.tsv", _NLI, label=False)}, submission={"test": "WNLI.tsv"}),
    # IMDB has no dev set: its 25,000 test reviews are the evaluation set, as in the papers that report it.
    Task(name="imdb", title="IMDB", text_columns=("text",), label_names=("neg", "pos"), metrics=("accuracy", "f1"),
         hub=("stanfordnlp/imdb", None), dev_splits=("test",), test_splits=(), folder="aclImdb",
         long_documents=True),
)}

GLUE_TASKS = tuple(n for n, t in TASKS.items() if t.hub[0] == "nyu-mll/glue")
CUSTOM = "custom"  # any labelled text data: DATA_DIR (a folder or hub:<id>), TEXT_COLUMNS, LABEL_COLUMN


def custom_task(text_columns: tuple[str, ...], label_names: Optional[tuple[str, ...]], hub: str = "") -> Task:
    """The generic task over `text_columns`: classification over `label_names` (accuracy headline; F1
    too when binary), or a regression when None (Pearson headline, Spearman)."""
    if label_names is None:
        metrics = ("pearson", "spearmanr")
    else:
        metrics = ("accuracy", "f1") if len(label_names) == 2 else ("accuracy",)
    return Task(name=CUSTOM, title=hub or "custom", text_columns=tuple(text_columns), label_names=label_names,
                metrics=metrics, hub=(hub, None), test_splits=("test",))


def get(name: str) -> Task:
    """The declared task `name` (case-insensitive; "sst-2" and "sts-b" spelled as GLUE does work too).
    Raises ValueError naming the known tasks; "custom" is built by `pruning.data.loading` from its data."""
    key = name.lower().replace("-", "")
    if key in TASKS:
        return TASKS[key]
    raise ValueError(f"unknown TASK {name!r}; choose one of {', '.join(TASKS)}, or {CUSTOM!r} with DATA_DIR, "
                     "TEXT_COLUMNS and LABEL_COLUMN")


def known(name: str) -> bool:
    """True for a declared task name or "custom"."""
    return name.lower() == CUSTOM or name.lower().replace("-", "") in TASKS
