"""GLUE SST-2: find it, read it strictly, tokenize it.

Lookup order (the first that applies wins):
  1. an explicit data directory: the DATA_DIR constant / --data_dir, else $SST2_DIR;
  2. ../shared/sst2 beside this repository (the project machines' copy of the GLUE files);
  3. the Hugging Face Hub's nyu-mll/glue, config sst2.
An explicit directory that is missing or malformed is an error: it never falls back silently.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
from datasets import Dataset, DatasetDict

SPLIT_FILES = {"train": "train.tsv", "validation": "dev.tsv"}
REPO_SHARED_SST2 = Path(__file__).resolve().parents[2] / "shared" / "sst2"  # ../shared beside the repository


class DataError(ValueError):
    """Bad or missing data; the message names the file and the problem."""


def resolve_data_dir(data_dir: str = "") -> str | None:
    """The directory to read TSVs from, or None for the Hub."""
    explicit = data_dir or os.environ.get("SST2_DIR", "")
    if explicit:
        source = "--data_dir" if data_dir else "$SST2_DIR"
        if not os.path.isdir(explicit):
            raise DataError(f"data directory {explicit} (from {source}) does not exist or is not a directory; "
                            "point it at a folder holding GLUE SST-2's train.tsv and dev.tsv")
        return explicit
    if REPO_SHARED_SST2.is_dir():
        return str(REPO_SHARED_SST2)
    return None


def read_sst2_tsv(path: str) -> dict[str, list]:
    """Read one GLUE SST-2 TSV (header `sentence<TAB>label`), checking every row."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found; the data directory must hold GLUE SST-2's "
                        f"{' and '.join(SPLIT_FILES.values())}")
    sentences, labels = [], []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            # GLUE files are unquoted; CRLF line endings are accepted (the \r is stripped).
            rows = csv.reader((line.rstrip("\r\n") for line in f), delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(rows, None)
            if header is None:
                raise DataError(f"{path}: the file is empty (expected a `sentence<TAB>label` header)")
            missing = [c for c in ("sentence", "label") if c not in header]
            if missing:
                raise DataError(f"{path}: missing column(s) {missing}; the header is {header}, "
                                "expected `sentence<TAB>label`")
            s_col, l_col = header.index("sentence"), header.index("label")
            for line_no, row in enumerate(rows, start=2):
                if not row:
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{line_no}: expected {len(header)} tab-separated fields, got {len(row)}")
                if row[l_col] not in ("0", "1"):
                    raise DataError(f"{path}:{line_no}: label {row[l_col]!r} is not 0 or 1")
                sentences.append(row[s_col])
                labels.append(int(row[l_col]))
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    if not sentences:
        raise DataError(f"{path}: the split is empty (a header but no rows)")
    return {"sentence": sentences, "label": labels}


def load_sst2(data_dir: str = "") -> tuple[DatasetDict, str]:
    """(DatasetDict with train/validation, a description of where it came from)."""
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        splits = {split: Dataset.from_dict(read_sst2_tsv(os.path.join(directory, name)))
                  for split, name in SPLIT_FILES.items()}
        return DatasetDict(splits), os.path.abspath(directory)
    from datasets import load_dataset
    try:
        hub = load_dataset("nyu-mll/glue", "sst2")
    except Exception as e:  # offline, or the Hub is down
        raise DataError("no SST-2 data directory was given (DATA_DIR / --data_dir / $SST2_DIR), none was found at "
                        f"{REPO_SHARED_SST2}, and the Hub's nyu-mll/glue could not be loaded ({type(e).__name__}). "
                        "Pass --data_dir=/path/to/SST-2 holding train.tsv and dev.tsv.") from None
    splits = {}
    for split in SPLIT_FILES:
        ds = hub[split].select_columns(["sentence", "label"])
        if len(ds) == 0:
            raise DataError(f"Hub nyu-mll/glue sst2 [{split}]: the split is empty")
        bad = sorted(set(ds["label"]) - {0, 1})
        if bad:
            raise DataError(f"Hub nyu-mll/glue sst2 [{split}]: labels {bad} are not 0 or 1")
        splits[split] = ds
    return DatasetDict(splits), "hub:nyu-mll/glue/sst2"


HELD_OUT_SEED = 0  # one fixed draw, the same for every run seed: no run ever trains on the held-out slice


def hold_out(train: Dataset, n: int) -> tuple[Dataset, Dataset]:
    """(the train rows left for training, n rows held out of it): a seeded random slice, the same
    whatever the run's seed, for searches that must not read the dev set (allocate.py's reward)."""
    if n < 0 or n >= len(train):
        raise DataError(f"HELD_OUT={n}: hold out between 0 and {len(train) - 1} of the {len(train):,} train sentences")
    if n == 0:
        return train, train.select([])
    order = np.random.default_rng(HELD_OUT_SEED).permutation(len(train))
    held = sorted(order[:n].tolist())
    rest = sorted(order[n:].tolist())
    return train.select(rest).flatten_indices(), train.select(held).flatten_indices()


def load_train(data_dir: str = "") -> tuple[Dataset, str]:
    """Only the train split, read as `load_sst2` reads it: for work that must never see the dev set."""
    directory = resolve_data_dir(data_dir)
    if directory is not None:
        return Dataset.from_dict(read_sst2_tsv(os.path.join(directory, SPLIT_FILES["train"]))), os.path.abspath(directory)
    datasets, source = load_sst2(data_dir)
    return datasets["train"], source


def subset(ds: Dataset, n: int, seed: int) -> Dataset:
    """A seeded random subset of n rows (all rows when n is 0 or at least the size)."""
    if n and n < len(ds):
        return ds.shuffle(seed=seed).select(range(n)).flatten_indices()
    return ds


def tokenize(ds: DatasetDict, tokenizer, max_length: int) -> DatasetDict:
    """Token ids without padding (DataCollatorWithPadding pads each batch to its own longest row),
    plus a `length` column so the length-grouped sampler need not recompute it."""
    def encode(batch):
        enc = tokenizer(batch["sentence"], truncation=True, max_length=max_length)
        enc["length"] = [len(ids) for ids in enc["input_ids"]]
        return enc
    return ds.map(encode, batched=True, remove_columns=["sentence"], desc="tokenize")
