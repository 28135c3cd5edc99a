"""The project's statistics: how two sets of runs are compared, and how the figures are written in a table.

Runs are compared paired: run i of A and run i of B share a seed (the same data order, dropout and
initialisation of the head), and on the dev set they share the examples. Every comparison is of the
task's headline metric (`pruning.run.schema.RunResults.headline`: accuracy, F1, Matthews correlation or
Pearson r), and three tests answer two different questions:

- `paired_p`, the paired t-test over seeds: is the difference larger than the training noise?
- `mcnemar_p`, McNemar's exact test on one seed's dev predictions (right or wrong per example, so
  classification only; a regression such as STS-B has no such test), and `bootstrap_difference`, the
  mean difference of the headline metric over seeds with the dev examples resampled: how much does the
  difference rest on which examples the dev set happens to hold?

`paired_cells` writes all of them as table cells, the one place a paired comparison is written
(report.py's tables, allocate.py and lottery.py). Accuracy and F1 are fractions in [0, 1], not percent;
correlations lie in [-1, 1]. The metrics themselves are `pruning.data.tasks.compute_metrics` (sklearn, scipy).
"""
from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np
from scipy.stats import binomtest, ttest_rel

from pruning.data.tasks import compute_metrics

MISSING = "–"        # a table cell with nothing to show
RESAMPLES = 10_000         # bootstrap resamples of the dev examples for accuracy (numpy: all at once)
METRIC_RESAMPLES = 2_000   # the same for the other metrics: each resample calls sklearn or scipy once per run
REGRESSION_METRICS = ("pearson", "spearmanr")   # a regression's metrics: no example is right or wrong
NO_MCNEMAR = "n/a (regression)"                # McNemar's cell of a regression


# --- table cells ---------------------------------------------------------------------------------------
def fmt(x, digits: int = 4) -> str:
    """One table cell: a float with `digits` decimals, a bool as yes/no, None as "–", anything else as str()."""
    if x is None:
        return MISSING
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def mean_std(values: Sequence[float | None]) -> str:
    """"mean ± std" with 4 decimals (std: the sample standard deviation, n − 1, as `statistics.stdev`);
    Nones are left out; one value is written alone and no value as "–"."""
    values = [v for v in values if v is not None]
    if not values:
        return MISSING
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def summary(values: Sequence[float | None]) -> dict:
    """{"mean", "std", "n"} of the values that are not None, as numbers (the figures `mean_std` writes):
    std is the sample standard deviation (n − 1), None below two values; mean is None without values."""
    values = [v for v in values if v is not None]
    return {"mean": statistics.mean(values) if values else None,
            "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def p_text(boot: dict) -> str:
    """The p of a `bootstrap_difference` for a table, 3 significant digits. When no resample crossed zero
    the estimate is 0, which only says p < 2 / resamples (two-sided): it reads "< 0.0002" for 10,000.
    "–" when no resample was defined (a constant vector's correlation)."""
    if not boot["resamples"]:
        return MISSING
    return f"< {2 / boot['resamples']:.2g}" if boot["p"] == 0 else f"{boot['p']:.3g}"


# --- tests ---------------------------------------------------------------------------------------------
def paired_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p of the paired t-test of a[i] against b[i] (scipy.stats.ttest_rel; n − 1 degrees of
    freedom). None below 2 pairs, or when every difference is the same (the t statistic is undefined:
    no spread), to within float rounding: 0.9 − 0.8 and 0.8 − 0.7 differ in the 17th digit, which
    ttest_rel would read as a spread and answer p ≈ 1e-31. Raises ValueError when a and b differ in length."""
    if len(a) != len(b):
        raise ValueError(f"paired_p: {len(a)} values against {len(b)}; pairs need one of each")
    diffs = np.subtract(a, b, dtype=float)
    if len(diffs) < 2 or np.ptp(diffs) <= 1e-12:
        return None
    return float(ttest_rel(a, b).pvalue)


def dev_outputs(result) -> tuple[np.ndarray, np.ndarray] | None:
    """(predicted, label) of every dev example, in the dataset's order, two arrays of shape (n,): class ids,
    or floats for a regression; from the run's results (a `pruning.run.schema.RunResults`: `dev_predictions`).
    None for a run from before predictions were saved."""
    dev = result.dev_predictions
    return None if not dev else (np.asarray(dev.predicted), np.asarray(dev.label))


def correct_on_dev(result) -> np.ndarray | None:
    """Which dev examples a classifier got right: a boolean array of shape (n,) in the dataset's order
    (`dev_outputs`). None for a run from before predictions were saved, and for a regression (its
    headline is a correlation: no prediction is right or wrong)."""
    outputs = dev_outputs(result)
    if outputs is None or result.headline in REGRESSION_METRICS:
        return None
    return outputs[0] == outputs[1]


def mcnemar_p(a, b) -> float:
    """McNemar's exact test of two classifiers on the same sentences (McNemar 1947; the exact, binomial
    form): a and b are boolean arrays of one shape, True where that classifier is right. Under the null
    both are equally likely to be the only one right, so the number of sentences only `a` gets right is
    Binomial(discordant, 1/2): the two-sided p of scipy.stats.binomtest. 1.0 when no sentence is
    discordant. Raises ValueError when the shapes differ."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mcnemar_p: predictions on {a.shape} and {b.shape} sentences; they must be the same sentences")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return 1.0 if only_a + only_b == 0 else float(binomtest(only_a, only_a + only_b, 0.5).pvalue)


def _outputs(run) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, label) of one run's dev examples: a `dev_outputs` pair as it is, or a `correct_on_dev`
    boolean array read as (right, all True), whose accuracy is the share right."""
    if isinstance(run, tuple):
        return np.asarray(run[0]), np.asarray(run[1])
    right = np.asarray(run, dtype=bool)
    return right, np.ones_like(right)


def bootstrap_difference(a: Sequence, b: Sequence, metric: str = "accuracy", resamples: int | None = None,
                         seed: int = 0) -> dict:
    """Mean over seeds of metric(A) − metric(B), with a bootstrap over the dev examples.

    a[i], b[i]: the dev outputs of the runs of seed i, each a (predicted, label) pair of arrays of shape
    (n,) (`dev_outputs`; floats for a regression), or a boolean array of shape (n,) (`correct_on_dev`,
    right or wrong: accuracy only). `metric`: a standard name of `pruning.data.tasks.compute_metrics`, the
    task's headline. The examples are resampled with replacement (Efron's nonparametric bootstrap; Efron &
    Tibshirani 1993), the same resample for every seed and both arms, so the pairing by example is kept;
    the statistic is the mean over seeds of the difference in `metric`, each computed on the resample by
    `compute_metrics` (sklearn, scipy). Accuracy, the share of examples right, is the mean of the
    resampled right/wrong, which numpy takes for all resamples at once (the same numbers, far faster).

    Returns a dict: "difference" (on the dev set as it is; the metric's unit: a fraction, or a difference
    of correlations), "low" and "high" (the 95% percentile interval), "p" (two-sided: twice the share of
    resamples on the far side of zero, at most 1) and "resamples" (those the statistic is defined on: a
    correlation of a constant resample is undefined and left out). `resamples` defaults to RESAMPLES for
    accuracy and METRIC_RESAMPLES for the others (each resample costs 2 × seeds calls of 1–10 ms), and is
    rounded down to a multiple of 1,000 (at least 1,000 expected). Resampling is seeded (numpy's
    default_rng(seed)), so a table is the same every time it is written.

    It measures how much the difference depends on which examples the dev set holds; `paired_p`
    measures the training noise. (scipy.stats.bootstrap gives the interval but no p, hence numpy.)
    Raises ValueError when a and b hold different numbers of seeds, none, runs whose labels differ (not
    the same dev examples), or boolean arrays with another metric than accuracy."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"bootstrap_difference: {len(a)} seeds of A against {len(b)} of B; give one run per "
                         "seed to each, paired")
    runs = [_outputs(x) for x in [*a, *b]]
    labels = runs[0][1]
    if any(len(p) != len(labels) or not np.array_equal(l, labels) for p, l in runs):
        raise ValueError("bootstrap_difference: every run must hold the same dev examples (same labels, same order)")
    if metric != "accuracy" and not all(isinstance(x, tuple) for x in [*a, *b]):
        raise ValueError(f"bootstrap_difference: {metric} needs each run's (predicted, label), not right/wrong")
    n, k = len(labels), len(a)
    rng = np.random.default_rng(seed)
    draws = (rng.integers(0, n, (1000, n)) for _ in range((resamples or (
        RESAMPLES if metric == "accuracy" else METRIC_RESAMPLES)) // 1000))
    if metric == "accuracy":
        right = [(p == l).astype(float) for p, l in runs]
        per_example = np.mean([x - y for x, y in zip(right[:k], right[k:])], axis=0)
        observed = float(per_example.mean())
        stats = np.concatenate([per_example[idx].mean(axis=1) for idx in draws])
    else:
        def difference(idx) -> float:
            values = [compute_metrics((metric,), p[idx], l[idx])[metric] for p, l in runs]
            return float(np.mean(np.subtract(values[:k], values[k:])))
        observed = difference(slice(None))
        stats = np.array([difference(i) for idx in draws for i in idx])
    stats = stats[np.isfinite(stats)]
    if not len(stats):
        return {"difference": observed, "low": float("nan"), "high": float("nan"), "p": float("nan"), "resamples": 0}
    low, high = np.percentile(stats, [2.5, 97.5])
    p = min(1.0, 2 * min(float((stats <= 0).mean()), float((stats >= 0).mean())))
    return {"difference": observed, "low": float(low), "high": float(high), "p": p, "resamples": len(stats)}


def paired_cells(a: Sequence[float], b: Sequence[float], dev_a: Sequence | None = None,
                 dev_b: Sequence | None = None, metric: str = "accuracy") -> dict[str, str]:
    """The cells of one paired comparison of A against B in `metric` (the task's headline), the runs paired
    by seed (a[i], b[i]: the metric of seed i's runs; dev_a[i], dev_b[i]: their dev outputs, optional:
    `dev_outputs` pairs, or `correct_on_dev` arrays for accuracy):

    "difference": A − B, mean ± std over seeds; "t": the paired t-test's p (`paired_p`, 3 decimals);
    "mcnemar": McNemar's exact p of each seed, comma-separated (right or wrong per example, whatever the
    headline; NO_MCNEMAR for a regression); "interval": the bootstrap's 95% interval of the difference
    ("-0.0100 … +0.0200"); "bootstrap": its p (`p_text`). The last three are "–" unless every run has its
    dev predictions. A table takes the cells it shows."""
    regression = metric in REGRESSION_METRICS
    cells = {"difference": mean_std([x - y for x, y in zip(a, b)]), "t": fmt(paired_p(a, b), 3),
             "mcnemar": NO_MCNEMAR if regression else MISSING, "interval": MISSING, "bootstrap": MISSING}
    dev = [*(dev_a or []), *(dev_b or [])]
    if dev_a and dev_b and all(d is not None for d in dev):
        boot = bootstrap_difference(dev_a, dev_b, metric)
        cells.update(interval=f"{boot['low']:+.4f} … {boot['high']:+.4f}", bootstrap=p_text(boot))
        if not regression:
            right = [np.equal(*_outputs(d)) for d in dev]
            cells["mcnemar"] = ", ".join(f"{mcnemar_p(x, y):.3g}" for x, y in zip(right[:len(dev_a)], right[len(dev_a):]))
    return cells
