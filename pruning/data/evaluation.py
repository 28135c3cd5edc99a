"""Evaluating a run on its task: the Trainer's `compute_metrics`, every dev set at every stage (MNLI's
matched and mismatched), the metrics as results.json holds them, and test-set predictions in the GLUE
leaderboard's submission layout.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from pruning.data.tasks import METRIC_TITLES, Task


def metric_function(task: Task):
    """The Trainer's compute_metrics for `task`: its metrics (`Task.score`: scikit-learn, scipy) of the
    predictions from the logits, keyed by their standard names (HF adds "eval_")."""
    def compute_metrics(eval_pred) -> dict:
        logits, labels = eval_pred
        return task.score(task.predictions(logits), np.asarray(labels).reshape(-1))
    return compute_metrics


def dev_set_name(split: str) -> str:
    """The short name of a dev split in metric keys and results: "validation_mismatched" -> "mismatched"."""
    return split.removeprefix("validation_")


def evaluate_dev_sets(trainer) -> dict:
    """`trainer.evaluate()` on its dev set, plus each of `trainer.other_dev_sets` (name -> dataset), whose
    metrics come back as eval_<name>_<metric> (HF's metric_key_prefix). Each evaluation is logged; the
    extra ones carry no "eval_loss", so neither early stopping nor the accuracy timeline counts them."""
    metrics = trainer.evaluate()
    for name, dataset in getattr(trainer, "other_dev_sets", {}).items():
        metrics.update(trainer.evaluate(dataset, metric_key_prefix=f"eval_{name}"))
    return metrics


def stage_metrics(evals: dict, task: Task, others: tuple[str, ...] = ()) -> dict:
    """results.json's metrics of one stage from an `evaluate_dev_sets` dict: every standard metric name
    (None where the task does not compute it) and the loss, and under "other_dev_sets" the same per
    other dev set (`others`, short names)."""
    def of(prefix: str) -> dict:
        return {**{name: evals.get(f"{prefix}_{name}") for name in METRIC_TITLES}, "loss": evals.get(f"{prefix}_loss")}
    out = of("eval")
    if others:
        out["other_dev_sets"] = {name: of(f"eval_{name}") for name in others}
    return out


def predict_in_order(trainer, dataset) -> tuple[np.ndarray, np.ndarray | None]:
    """(logits (rows, num_labels), label ids (rows,) or None for a split without labels), both in the
    dataset's order. HF's eval sampler groups rows by length, shuffled with the run's seed, so predict()
    returns them in another order: it is undone here with the same, freshly seeded sampler."""
    out = trainer.predict(dataset)
    sampler = trainer._get_eval_sampler(dataset)  # the same order predict() used: a fresh, seeded generator
    order = np.arange(len(dataset)) if sampler is None else np.fromiter(iter(sampler), dtype=np.int64)
    logits = np.empty_like(np.asarray(out.predictions))
    logits[order] = np.asarray(out.predictions)
    labels = None
    if out.label_ids is not None:
        labels = np.empty_like(np.asarray(out.label_ids))
        labels[order] = np.asarray(out.label_ids)
    return logits, labels


def write_test_predictions(trainer, task: Task, encoded, out_dir: Path) -> dict[str, str]:
    """Predict every test split of `encoded` (task.test_splits that it holds) and write each to
    out_dir/<the leaderboard's file name> (the custom task: test.tsv): a header `index<TAB>prediction`,
    then one row per example in the file's order, the prediction as the task's files write labels
    (`Task.label_text`). Each file is written beside its final name, then renamed. Returns split -> path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for split in task.test_splits:
        if split not in encoded:
            continue
        dataset = encoded[split]
        predictions = task.predictions(predict_in_order(trainer, dataset.remove_columns(["index"]))[0])
        path = out_dir / task.submission.get(split, f"{split}.tsv")
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f, delimiter="\t", lineterminator="\n")
            writer.writerow(["index", "prediction"])
            for index, prediction in zip(dataset["index"], predictions):
                writer.writerow([index, task.label_text(prediction)])
        os.replace(tmp, path)
        written[split] = str(path)
    return written
