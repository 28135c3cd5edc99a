"""A task's data (`pruning.data.tasks`): find it, read it strictly, tokenize it.

Lookup order (the first that applies wins):
  1. an explicit data directory: the DATA_DIR constant / --data_dir (for SST-2 also $SST2_DIR), holding
     the task's files in its own distribution's layout (GLUE's TSVs; IMDB's aclImdb folders; for
     "custom", train / validation (or dev) / test files in CSV, TSV, JSON Lines or Parquet);
  2. ../shared/<task> beside this repository (the project machines hold ../shared/sst2 only);
  3. the Hugging Face Hub: the task's dataset (nyu-mll/glue, stanfordnlp/imdb), or for "custom" the
     id given as DATA_DIR="hub:<id>[:<config>]".
An explicit directory that is missing or malformed is an error: it never falls back silently. Every
error names the file (and line) and the fix.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict
from datasets.fingerprint import Hasher

from pruning.data.tasks import CUSTOM, Split, TASKS, Task, custom_task, get
from pruning.settings import text_columns

REPO_SHARED = Path(__file__).resolve().parents[3] / "shared"  # ../shared beside the repository
REPO_SHARED_SST2 = REPO_SHARED / "sst2"
HUB_PREFIX = "hub:"
CUSTOM_FORMATS = {".csv": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}), ".jsonl": ("json", {}),
                  ".json": ("json", {}), ".parquet": ("parquet", {})}
CUSTOM_SPLITS = {"train": ("train",), "validation": ("validation", "dev"), "test": ("test",)}
IMDB_LABEL_FOLDERS = ("neg", "pos")


class DataError(ValueError):
    """Bad or missing data; the message names the file and the problem."""


# --- where --------------------------------------------------------------------------------------------
def resolve_data_dir(data_dir: str = "", task: str = "sst2") -> str | None:
    """The directory to read `task`'s files from, or None for the Hub."""
    explicit = data_dir or (os.environ.get("SST2_DIR", "") if task == "sst2" else "")
    if explicit.startswith(HUB_PREFIX):
        return None
    if explicit:
        source = "--data_dir" if data_dir else "$SST2_DIR"
        if not os.path.isdir(explicit):
            raise DataError(f"data directory {explicit} (from {source}) does not exist or is not a directory; "
                            f"point it at a folder holding {_expected_files(task)}")
        return explicit
    shared = REPO_SHARED / task
    if task != CUSTOM and shared.is_dir():
        return str(shared)
    return None


def _expected_files(task: str) -> str:
    if task == CUSTOM:
        return "train and validation (or dev) files: .csv, .tsv, .jsonl or .parquet"
    t = get(task)
    if t.name == "imdb":
        return "IMDB's aclImdb layout: train/neg, train/pos, test/neg, test/pos of .txt reviews"
    return f"{t.title}'s GLUE files " + ", ".join(t.files[s].file for s in ("train", *t.dev_splits))


# --- GLUE files ---------------------------------------------------------------------------------------
def _guess_layout(path: str, header: list[str]) -> str:
    """' (it looks like TASK's FILE)' when `header` is another task's, else ''."""
    for other in TASKS.values():
        for split in other.files.values():
            if split.header is not None and tuple(header) == split.header:
                return f" (it looks like {other.title}'s {split.file}: is --task right?)"
    return ""


def read_split(task: Task, split: str, path: str) -> dict[str, list]:
    """Read one file of a GLUE task (`task.files[split]`), checking every row: our columns
    (`task.text_columns`, "label" (class id, or float score) and, for a test file, "index").
    Raises DataError naming file:line for a missing file, a wrong header or field count, a label outside
    the task's set, a non-numeric or out-of-range score, or an empty split."""
    layout: Split = task.files[split]
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; the data directory must hold {_expected_files(task.name)}")
    out = {c: [] for c in layout.columns}
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC's files may begin with a BOM
            # GLUE files are unquoted; CRLF line endings are accepted (the \r is stripped).
            rows = csv.reader((line.rstrip("\r\n") for line in f), delimiter="\t", quoting=csv.QUOTE_NONE)
            if layout.header is not None:
                header = next(rows, None)
                if header is None:
                    raise DataError(f"{path}: the file is empty (expected the header {_tabs(layout.header)})")
                if tuple(header) != layout.header:
                    raise DataError(f"{path}:1: the header is {_tabs(header)}, but {task.title}'s {layout.file} has "
                                    f"{_tabs(layout.header)}{_guess_layout(path, header)}")
                where = {c: header.index(n) for c, n in layout.columns.items()}
                width, first = len(header), 2
            else:
                where, width, first = dict(layout.columns), layout.fields, 1
            for line_no, row in enumerate(rows, start=first):
                if not row:
                    continue
                if len(row) != width:
                    hint = _guess_layout(path, row) if line_no == 1 else ""
                    raise DataError(f"{path}:{line_no}: expected {width} tab-separated fields, got {len(row)}{hint}")
                for column, at in where.items():
                    value = row[at]
                    if column == "label":
                        value = _label(task, value, f"{path}:{line_no}")
                    out[column].append(value)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not out[task.text_columns[0]]:
        raise DataError(f"{path}: the split is empty (no rows{' after the header' if layout.header else ''})")
    return out


def _tabs(columns) -> str:
    return "`" + "<TAB>".join(columns) + "`"


def _label(task: Task, text: str, where: str):
    if task.is_regression:
        try:
            score = float(text)
        except ValueError:
            raise DataError(f"{where}: score {text!r} is not a number ({task.title} scores are floats in [0, 5])") from None
        if not 0.0 <= score <= 5.0:
            raise DataError(f"{where}: score {score} is outside {task.title}'s range [0, 5]")
        return score
    if text not in task.file_labels:
        raise DataError(f"{where}: label {text!r} is not one of {task.title}'s labels "
                        f"{', '.join(task.file_labels)}")
    return task.file_labels.index(text)


def read_sst2_tsv(path: str) -> dict[str, list]:
    """One GLUE SST-2 TSV (`read_split` for SST-2's train or dev file)."""
    return read_split(TASKS["sst2"], "train", path)


# --- IMDB ---------------------------------------------------------------------------------------------
def read_imdb(folder: str) -> dict[str, list]:
    """One split of IMDB's aclImdb distribution (`folder`: aclImdb/train or aclImdb/test): the reviews
    in neg/*.txt (label 0) and pos/*.txt (1), each sorted by name. Raises DataError for a missing
    folder, a review that is not UTF-8 text or is empty, or a split without reviews."""
    texts, labels = [], []
    for label, sub in enumerate(IMDB_LABEL_FOLDERS):
        directory = Path(folder) / sub
        if not directory.is_dir():
            raise DataError(f"{directory}: folder not found; the data directory must hold "
                            f"{_expected_files('imdb')}")
        for path in sorted(directory.glob("*.txt")):
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}: not UTF-8 text ({e})") from None
            if not text.strip():
                raise DataError(f"{path}: the review is empty")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise DataError(f"{folder}: the split is empty (no .txt reviews in neg/ or pos/)")
    return {"text": texts, "label": labels}


# --- custom data --------------------------------------------------------------------------------------
def _custom_files(directory: str) -> dict[str, str]:
    found = {}
    for split, stems in CUSTOM_SPLITS.items():
        for stem in stems:
            matches = [p for p in sorted(Path(directory).glob(f"{stem}.*")) if p.suffix in CUSTOM_FORMATS]
            if len(matches) > 1:
                raise DataError(f"{directory}: more than one {split} file ({', '.join(p.name for p in matches)}); "
                                "keep one")
            if matches:
                found.setdefault(split, str(matches[0]))
    for split in ("train", "validation"):
        if split not in found:
            raise DataError(f"{directory}: no {split} file; the data directory must hold {_expected_files(CUSTOM)}")
    return found


def _read_custom(data_dir: str) -> tuple[DatasetDict, dict[str, str], str]:
    """(the splits as read, where each came from, where the data came from)."""
    from datasets import load_dataset
    if data_dir.startswith(HUB_PREFIX):
        ident, _, config = data_dir[len(HUB_PREFIX):].partition(":")
        try:
            hub = load_dataset(ident, config or None)
        except Exception as e:  # offline, unknown id, or the Hub is down
            raise DataError(f"DATA_DIR={data_dir!r}: the Hub dataset could not be loaded ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); give a local folder instead") from None
        dev = next((s for s in ("validation", "dev", "test") if s in hub), None)
        if "train" not in hub or dev is None:
            raise DataError(f"DATA_DIR={data_dir!r}: the dataset has splits {list(hub)}; it needs train and "
                            "validation (or dev, or test)")
        splits = {"train": hub["train"], "validation": hub[dev]}
        if dev != "test" and "test" in hub:
            splits["test"] = hub["test"]
        where = {s: f"{data_dir} [{s}]" for s in splits}
        return DatasetDict(splits), where, data_dir
    directory = resolve_data_dir(data_dir, CUSTOM)
    if directory is None:
        raise DataError("TASK=custom needs DATA_DIR: a folder with train and validation files, or hub:<dataset id>")
    files = _custom_files(directory)
    splits = {}
    for split, path in files.items():
        builder, options = CUSTOM_FORMATS[Path(path).suffix]
        try:
            splits[split] = load_dataset(builder, data_files={split: path}, **options)[split]
        except Exception as e:
            raise DataError(f"{path}: cannot be read as {Path(path).suffix[1:]} ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})") from None
    return DatasetDict(splits), files, os.path.abspath(directory)


def load_custom(data_dir: str, text_columns: tuple[str, ...], label_column: str) -> tuple[Task, DatasetDict, str]:
    """The custom task's data: `text_columns` (one or two) and `label_column` of each split, with the
    task its labels imply (`custom_classes`): a Hub ClassLabel's names; strings (sorted); whole numbers
    (ids 0..K-1 as they are, any others as class names in increasing order); or floats (a regression).
    Raises DataError naming the file and row for a missing column or label cell, an empty text or split,
    or a dev label the train split does not have."""
    raw, where, source = _read_custom(data_dir)
    for split, ds in raw.items():
        for column in (*text_columns, *((label_column,) if split != "test" else ())):
            if column not in ds.column_names:
                raise DataError(f"{where[split]}: no column {column!r} (it has {', '.join(ds.column_names)}); set "
                                f"{'TEXT_COLUMNS' if column in text_columns else 'LABEL_COLUMN'}")
        if len(ds) == 0:
            raise DataError(f"{where[split]}: the split is empty")
        for column in text_columns:
            bad = next((i for i, t in enumerate(ds[column]) if not isinstance(t, str)), None)
            if bad is not None:
                raise DataError(f"{where[split]}: row {bad + 1} has no text in {column!r} ({ds[column][bad]!r})")
        if split != "test":
            bad = next((i for i, y in enumerate(ds[label_column]) if _missing(y)), None)
            if bad is not None:
                raise DataError(f"{where[split]}: row {bad + 1} has no label in {label_column!r}; fill it in or "
                                "drop the row")
    names, ids = custom_classes(raw["train"].features[label_column], raw["train"][label_column],
                                f"{where['train']}: the labels in {label_column!r}")
    task = custom_task(text_columns, names, hub=data_dir[len(HUB_PREFIX):] if data_dir.startswith(HUB_PREFIX) else "")
    splits = {}
    for split, ds in raw.items():
        columns = {c: ds[c] for c in text_columns}
        if split != "test":
            columns["label"] = [_custom_label(y, names, ids, f"{where[split]}: row {i + 1}")
                                for i, y in enumerate(ds[label_column])]
        else:
            columns["index"] = list(range(len(ds)))
        splits[split] = Dataset.from_dict(columns)
    return task, DatasetDict(splits), source


def _missing(y) -> bool:
    """An empty label cell as the readers give it: None (JSON, parquet, a Hub dataset) or NaN (CSV/TSV)."""
    return y is None or (isinstance(y, float) and y != y)


def _whole(y) -> bool:
    return isinstance(y, (int, np.integer)) and not isinstance(y, bool)


def custom_classes(feature, labels: list, what: str) -> tuple[tuple[str, ...] | None, dict | None]:
    """(class names, label value -> class id) of a custom task's train labels, or (None, None) for a
    regression. Class id i is names[i]:
    - a Hub ClassLabel: its names, its ids;
    - strings: the distinct strings, sorted;
    - whole numbers 0..K-1: the ids as they are, named "0".."K-1";
    - any other whole numbers (1 and 2; 1..5 stars; 0, 1, 3): class names, in increasing order, so no
      class that never occurs is made up; a note says how they map;
    - other numbers: a regression.
    Raises DataError (`what` names the file and column) for negative ids, mixed types, or one class."""
    if getattr(feature, "names", None):
        names = tuple(feature.names)
        ids = {i: i for i in range(len(names))}
    elif all(isinstance(y, str) for y in labels):
        names = tuple(sorted(set(labels)))
        ids = {name: i for i, name in enumerate(names)}
    elif all(_whole(y) for y in labels):
        values = sorted({int(y) for y in labels})
        names = tuple(str(v) for v in values)
        ids = {v: i for i, v in enumerate(values)}
        if values != list(range(len(values))) and len(values) > 1:
            print(f"note: {what} are the whole numbers {', '.join(names)}, not the class ids 0..{len(values) - 1}: "
                  "they are read as class names, in increasing order ("
                  + ", ".join(f"{v} -> class {i}" for v, i in ids.items()) + ")", flush=True)
    elif all(isinstance(y, (int, float)) and not isinstance(y, bool) for y in labels):
        return None, None  # a regression
    else:
        kinds = sorted({type(y).__name__ for y in labels})
        raise DataError(f"{what} mix types ({', '.join(kinds)}); use class names, whole numbers, or numbers (a "
                        "regression) throughout")
    if len(names) < 2:
        raise DataError(f"{what}: every label is {names[0]!r}; a classifier needs two classes or more")
    return names, ids


def _custom_label(y, names, ids, where):
    if names is None:
        if isinstance(y, bool) or not isinstance(y, (int, float)):
            raise DataError(f"{where}: label {y!r} is not a number")
        return float(y)
    key = int(y) if _whole(y) else y
    if isinstance(key, (str, int)) and not isinstance(key, bool) and key in ids:
        return ids[key]
    raise DataError(f"{where}: label {y!r} is not one the train split has ({', '.join(names)})")


# --- a task's data ------------------------------------------------------------------------------------
def load(task: str = "sst2", data_dir: str = "", text_columns: tuple[str, ...] = (), label_column: str = "label",
         with_test: bool = False) -> tuple[Task, DatasetDict, str]:
    """(the task, a DatasetDict with "train" and the task's dev splits (and its test splits when
    `with_test`), a description of where it came from). Each split has the task's text columns and
    "label" (class id, or float for a regression); test splits have "index" instead of "label".
    Raises DataError (see the module's docstring for the lookup order)."""
    if task.lower() == CUSTOM:
        t, ds, source = load_custom(data_dir, tuple(text_columns), label_column)
        keep = ["train", "validation"] + (["test"] if with_test and "test" in ds else [])
        check_computable(t, ds["validation"]["label"], source)
        return t, DatasetDict({s: ds[s] for s in keep}), source
    t = get(task)
    directory = resolve_data_dir(data_dir, t.name)
    wanted = ("train", *t.dev_splits, *(t.test_splits if with_test else ()))
    if directory is not None:
        if t.name == "imdb":
            splits = {"train": read_imdb(os.path.join(directory, "train")),
                      "test": read_imdb(os.path.join(directory, "test"))}
        else:
            splits = {s: read_split(t, s, os.path.join(directory, t.files[s].file)) for s in wanted}
        ds = DatasetDict({s: Dataset.from_dict(columns) for s, columns in splits.items()})
        source = os.path.abspath(directory)
    else:
        ds, source = _load_hub(t, wanted)
    for split in t.dev_splits:
        check_computable(t, ds[split]["label"], f"{source} [{split}]")
    return t, ds, source


def _load_hub(t: Task, wanted: tuple[str, ...]) -> tuple[DatasetDict, str]:
    from datasets import load_dataset
    ident, config = t.hub
    source = f"hub:{ident}" + (f"/{config}" if config else "")
    try:
        hub = load_dataset(ident, config) if config else load_dataset(ident)
    except Exception as e:  # offline, or the Hub is down
        raise DataError(f"no {t.title} data directory was given (DATA_DIR / --data_dir), none was found at "
                        f"{REPO_SHARED / t.name}, and the Hub's {ident} could not be loaded ({type(e).__name__}). "
                        f"Pass --data_dir=/path/to/{t.folder or t.name} holding {_expected_files(t.name)}.") from None
    return DatasetDict({s: _hub_split(t, hub, s, source) for s in wanted}), source


def _hub_split(t: Task, hub, split: str, source: str) -> Dataset:
    """One Hub split reduced to our columns, checked as the files are."""
    where = f"{source} [{split}]"
    if split not in hub:
        raise DataError(f"{where}: the dataset has no split {split!r} (it has {', '.join(hub)})")
    ds = hub[split]
    missing = [c for c in (*t.text_columns, "label") if c not in ds.column_names]
    if missing:
        raise DataError(f"{where}: no column(s) {missing} (it has {', '.join(ds.column_names)})")
    if len(ds) == 0:
        raise DataError(f"{where}: the split is empty")
    if split in t.test_splits:  # GLUE's test labels are hidden (-1)
        index = ds["idx"] if "idx" in ds.column_names else list(range(len(ds)))
        return ds.select_columns(list(t.text_columns)).add_column("index", [str(i) for i in index])
    ds = ds.select_columns([*t.text_columns, "label"])
    if t.is_regression:
        bad = [y for y in ds["label"] if not 0.0 <= y <= 5.0]
    else:
        bad = sorted(set(ds["label"]) - set(range(t.num_labels)))
    if bad:
        raise DataError(f"{where}: labels {bad[:5]} are outside {t.title}'s "
                        f"{'range [0, 5]' if t.is_regression else 'classes 0..' + str(t.num_labels - 1)}")
    return ds


def check_computable(task: Task, labels: list, where: str) -> None:
    """DataError when the dev labels cannot give the task's headline metric: a constant score (no
    correlation), or a single class under Matthews correlation or F1."""
    if task.is_regression and len(set(labels)) < 2:
        raise DataError(f"{where}: every dev score is {labels[0]}, so {task.headline} is undefined; the dev set "
                        "needs scores that differ")
    if not task.is_regression and task.headline in ("matthews_correlation", "f1") and len(set(labels)) < 2:
        raise DataError(f"{where}: every dev label is class {labels[0]}, so {task.headline} is undefined; the dev "
                        "set needs both classes")


def load_sst2(data_dir: str = "") -> tuple[DatasetDict, str]:
    """(SST-2's train and validation splits, where they came from): `load("sst2", data_dir)`."""
    _, ds, source = load("sst2", data_dir)
    return ds, source


HELD_OUT_SEED = 0  # one fixed draw, the same for every run seed: no run ever trains on the held-out slice


def hold_out(train: Dataset, n: int) -> tuple[Dataset, Dataset]:
    """(the train rows left for training, n rows held out of it): a seeded random slice, the same
    whatever the run's seed, for searches that must not read the dev set (allocate.py's reward)."""
    if n < 0 or n >= len(train):
        raise DataError(f"HELD_OUT={n}: hold out between 0 and {len(train) - 1} of the {len(train):,} train examples")
    if n == 0:
        return train, train.select([])
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(train))
    held = sorted(order[:n].tolist())
    rest = sorted(order[n:].tolist())
    return train.select(rest).flatten_indices(), train.select(held).flatten_indices()


def load_train(task: str = "sst2", data_dir: str = "", text_columns: tuple[str, ...] = (),
               label_column: str = "label") -> tuple[Task, Dataset, str]:
    """Only the train split, read as `load` reads it: for work that must never see the dev set."""
    if task.lower() != CUSTOM:
        t = get(task)
        directory = resolve_data_dir(data_dir, t.name)
        if directory is not None:
            columns = (read_imdb(os.path.join(directory, "train")) if t.name == "imdb"
                       else read_split(t, "train", os.path.join(directory, t.files["train"].file)))
            return t, Dataset.from_dict(columns), os.path.abspath(directory)
    t, ds, source = load(task, data_dir, text_columns, label_column)
    return t, ds["train"], source


def run_task(settings: dict) -> dict:
    """`load`'s and `load_train`'s task arguments from a run's settings (results.json "config", or a
    script's configuration): task, data_dir, text_columns, label_column. Runs from before tasks: SST-2."""
    return {"task": settings.get("TASK") or "sst2", "data_dir": settings.get("DATA_DIR") or "",
            "text_columns": text_columns(settings), "label_column": settings.get("LABEL_COLUMN") or "label"}


def subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset of n rows (all rows when n is 0 or at least the size)."""
    if n and n < len(ds):
        return ds.shuffle(seed=seed).select(range(n)).flatten_indices()
    return ds


# --- tokens -------------------------------------------------------------------------------------------
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # token_type_ids: segment ids of a BERT pair
TRUNCATIONS = ("head", "head+tail")
HEAD_TAIL = (128, 382)  # Sun et al. 2019, "How to Fine-Tune BERT for Text Classification?": the best for IMDB at 512


def head_tail_split(budget: int) -> tuple[int, int]:
    """(head, tail) tokens kept of a text longer than `budget` tokens (MAX_LENGTH less the special
    tokens): Sun et al.'s 128 + 382 at 510, in the same proportion at other budgets."""
    head = round(budget * HEAD_TAIL[0] / sum(HEAD_TAIL))
    return head, budget - head


def tokenize(ds: DatasetDict, tokenizer, max_length: int, task: Task | None = None,
             truncation: str = "head") -> DatasetDict:
    """Token ids without padding (DataCollatorWithPadding pads each batch to its own longest row), a
    pair tokenized as a pair (segment ids for BERT), plus `length` (tokens kept) and `full_length`
    (tokens before truncation; `truncated_count` compares them).

    truncation: "head" keeps the first max_length tokens (a pair: HF's longest_first); "head+tail"
    keeps the first and last tokens of a single text (`head_tail_split`, Sun et al. 2019) and needs a
    fast tokenizer. Raises ValueError for head+tail on a pair task or a slow tokenizer."""
    task = task or TASKS["sst2"]
    columns = task.text_columns
    if truncation not in TRUNCATIONS:
        raise ValueError(f"TRUNCATION={truncation!r}: choose one of {', '.join(TRUNCATIONS)}")
    if truncation == "head+tail" and (task.is_pair or not getattr(tokenizer, "is_fast", False)):
        raise ValueError("TRUNCATION=head+tail keeps the start and end of one text: it needs a single-text task "
                         f"(not {task.title}'s pairs) and a fast tokenizer")

    def encode(batch):
        texts = [batch[c] for c in columns]
        full = tokenizer(*texts, truncation=False, verbose=False)["input_ids"]
        if truncation == "head+tail":
            enc = _head_tail(tokenizer, texts[0], max_length)
        else:
            enc = tokenizer(*texts, truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        enc["full_length"] = [len(ids) for ids in full]
        return enc
    # datasets fingerprints a map by pickling its function, tokenizer included (0.3 s a split for BERT's
    # vocabulary); the tokenizer's own serialization names the same transform in milliseconds.
    fingerprint = _tokenizer_fingerprint(tokenizer)
    parts = (fingerprint, max_length, truncation, columns, encode.__code__, _head_tail.__code__)
    return DatasetDict({split: part.map(encode, batched=True, remove_columns=list(columns), desc="tokenize",
                                        new_fingerprint=None if fingerprint is None else
                                        Hasher.hash((part._fingerprint, *parts)))
                        for split, part in ds.items()})


def _tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of everything a fast tokenizer does: its backend's JSON (vocabulary, normalizer, pre- and
    post-processor, added tokens), its class and its settings; None for a slow tokenizer (datasets then
    pickles and hashes it)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    state = json.loads(backend.to_str())
    for last_call in ("truncation", "padding"):  # what the last call set, not what the tokenizer is
        state.pop(last_call, None)
    settings = sorted((k, str(v)) for k, v in tokenizer.init_kwargs.items())
    return Hasher.hash((type(tokenizer).__name__, json.dumps(state, sort_keys=True), settings))  # a str: fast


def _head_tail(tokenizer, texts: list[str], max_length: int) -> dict:
    """Head+tail truncation through the fast tokenizer's own backend (tokenizers' Encoding.merge and
    post_process add the special tokens as the tokenizer does)."""
    from tokenizers import Encoding, Tokenizer
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    head, tail = head_tail_split(max_length - tokenizer.num_special_tokens_to_add(pair=False))
    out = {"input_ids": [], "attention_mask": [], **({"token_type_ids": []} if "token_type_ids" in
                                                      tokenizer.model_input_names else {})}
    for text in texts:
        enc = backend.encode(text, add_special_tokens=False)
        if len(enc.ids) > head + tail:
            first, last = backend.encode(text, add_special_tokens=False), backend.encode(text, add_special_tokens=False)
            first.truncate(head, direction="right")
            last.truncate(tail, direction="left")
            enc = Encoding.merge([first, last])
        enc = backend.post_process(enc, None, add_special_tokens=True)
        out["input_ids"].append(enc.ids)
        out["attention_mask"].append(enc.attention_mask)
        if "token_type_ids" in out:
            out["token_type_ids"].append(enc.type_ids)
    return out


def truncated_count(ds: Dataset) -> int:
    """Rows of a `tokenize`d split that lost tokens to truncation."""
    return int(sum(f > n for f, n in zip(ds["full_length"], ds["length"])))


def model_rows(ds: Dataset) -> list[dict]:
    """A tokenized split as the rows a model reads (MODEL_INPUTS that it has, and "labels" if it has
    labels): what DataCollatorWithPadding collates outside the Trainer."""
    keys = [k for k in MODEL_INPUTS if k in ds.column_names]
    rows = [{k: r[k] for k in keys} for r in ds]
    if "label" in ds.column_names:
        for row, y in zip(rows, ds["label"]):
            row["labels"] = y
    return rows
