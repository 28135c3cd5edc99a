"""Tiny folders in each task's official layout, written from the documented layouts (GLUE's download
script, IMDB's aclImdb); no downloaded data is committed. The rows are made up: the words carry the
label, so a tiny model can learn something, and every layout quirk (headerless CoLA, MRPC's quality
column, MNLI's two dev files and string labels, STS-B's float score) is there."""
from __future__ import annotations

import random
from pathlib import Path

from pruning.data.tasks import TASKS, Task

WORDS = {0: ["dull", "grim", "weak", "sad", "flat"], 1: ["fine", "warm", "bright", "good", "keen"],
         2: ["odd", "rare", "slow", "loud", "new"]}


def _text(rng: random.Random, label: int, n: int = 6) -> str:
    pool = WORDS[label % 3] + ["the", "a", "film", "story", "man"]
    return " ".join(rng.choice(pool) for _ in range(n))


def _row(task: Task, split: str, i: int, rng: random.Random) -> list[str]:
    layout = task.files[split]
    width = len(layout.header) if layout.header else layout.fields
    row = ["x"] * width
    labelled = "label" in layout.columns
    y = i % task.num_labels if not task.is_regression else None
    score = round(rng.uniform(0, 5), 3) if task.is_regression else None
    for column, at in layout.columns.items():
        where = at if layout.header is None else layout.header.index(at)
        if column == "label":
            row[where] = str(score) if task.is_regression else task.file_labels[y]
        elif column == "index":
            row[where] = str(i)
        else:
            row[where] = _text(rng, int(score) if score is not None else (y if labelled else i))
    return row


def write_glue(task_name: str, directory: Path, train: int = 48, dev: int = 24, test: int = 0,
               seed: int = 0) -> Path:
    """`directory` holding `task_name`'s GLUE files: train, every dev file, and the test files when
    `test` rows are asked for."""
    task, rng = TASKS[task_name], random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    sizes = {"train": train, **{s: dev for s in task.dev_splits}, **({s: test for s in task.test_splits} if test else {})}
    for split, n in sizes.items():
        layout = task.files[split]
        lines = ["\t".join(layout.header)] if layout.header else []
        lines += ["\t".join(_row(task, split, i, rng)) for i in range(n)]
        (directory / layout.file).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def write_imdb(directory: Path, per_class: int = 12, words: int = 40, seed: int = 0) -> Path:
    """An aclImdb folder: train/ and test/, each with neg/ and pos/ reviews `{id}_{rating}.txt`."""
    rng = random.Random(seed)
    for split in ("train", "test"):
        for label, sub in enumerate(("neg", "pos")):
            folder = directory / split / sub
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                rating = rng.randint(1, 4) if label == 0 else rng.randint(7, 10)
                (folder / f"{i}_{rating}.txt").write_text(_text(rng, label, words) + ".<br /><br />", encoding="utf-8")
    return directory
