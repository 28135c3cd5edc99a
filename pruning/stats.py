"""The project's statistics: how two sets of runs are compared, and how the figures are written in a table.

Runs are compared paired: run i of A and run i of B share a seed (the same data order, dropout and
initialisation of the head), and on the dev set they share the sentences. Three tests answer two
different questions:

- `paired_p`, the paired t-test over seeds: is the difference larger than the training noise?
- `mcnemar_p`, McNemar's exact test on one seed's dev predictions, and `bootstrap_difference`, the
  mean difference over seeds with the dev sentences resampled: how much does the difference rest on
  which sentences the dev set happens to hold?

`paired_cells` writes all of them as table cells, the one place a paired comparison is written
(report.py's tables, allocate.py and lottery.py). Accuracies are fractions in [0, 1], not percent.
"""
from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np
from scipy.stats import binomtest, ttest_rel

MISSING = "–"        # a table cell with nothing to show
RESAMPLES = 10_000   # bootstrap resamples of the dev sentences


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


def p_text(boot: dict) -> str:
    """The p of a `bootstrap_difference` for a table, 3 significant digits. When no resample crossed zero
    the estimate is 0, which only says p < 2 / resamples (two-sided): it reads "< 0.0002" for 10,000."""
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


def correct_on_dev(result) -> np.ndarray | None:
    """Which dev sentences a run classified correctly: a boolean array in the dataset's order, from the
    run's results (a `pruning.schema.RunResults`: `dev_predictions`, "predicted" and "label"); None for a
    run from before predictions were saved."""
    dev = result.dev_predictions
    return None if not dev else np.asarray(dev.predicted) == np.asarray(dev.label)


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


def bootstrap_difference(a: Sequence, b: Sequence, resamples: int = RESAMPLES, seed: int = 0) -> dict:
    """Mean over seeds of accuracy(A) − accuracy(B), with a bootstrap over the dev sentences.

    a[i], b[i]: boolean arrays (correct or not), one entry per dev sentence, of the runs of seed i.
    The sentences are resampled with replacement (Efron's nonparametric bootstrap; Efron & Tibshirani
    1993), the same resample for every seed and both arms, so the pairing by sentence is kept; the
    statistic is the mean over seeds of the difference in accuracy. Returns a dict of fractions:
    "difference" (on the dev set as it is), "low" and "high" (the 95% percentile interval), "p"
    (two-sided: twice the share of resamples on the far side of zero, at most 1) and "resamples"
    (`resamples` rounded down to a multiple of 1,000, at least 1,000 expected). Resampling is seeded
    (numpy's default_rng(seed)), so a table is the same every time it is written.

    It measures how much the difference depends on which sentences the dev set holds; `paired_p`
    measures the training noise. (scipy.stats.bootstrap gives the interval but no p, hence numpy.)
    Raises ValueError when a and b hold different numbers of seeds, none, or arrays of other lengths."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"bootstrap_difference: {len(a)} seeds of A against {len(b)} of B; give one array per "
                         "seed to each, paired")
    if len({len(x) for x in [*a, *b]}) != 1:
        raise ValueError("bootstrap_difference: every array must hold the same dev sentences")
    per_sentence = np.mean([x.astype(float) - y.astype(float) for x, y in zip(a, b)], axis=0)
    rng = np.random.default_rng(seed)
    stats = np.concatenate([per_sentence[rng.integers(0, len(per_sentence), (1000, len(per_sentence)))].mean(axis=1)
                            for _ in range(resamples // 1000)])
    low, high = np.percentile(stats, [2.5, 97.5])
    p = min(1.0, 2 * min(float((stats <= 0).mean()), float((stats >= 0).mean())))
    return {"difference": float(per_sentence.mean()), "low": float(low), "high": float(high), "p": p,
            "resamples": len(stats)}


def paired_cells(a: Sequence[float], b: Sequence[float], correct_a: Sequence | None = None,
                 correct_b: Sequence | None = None) -> dict[str, str]:
    """The cells of one paired comparison of A against B, the runs paired by seed (a[i], b[i]: the
    accuracies of seed i; correct_a[i], correct_b[i]: their `correct_on_dev` arrays, optional):

    "difference": A − B, mean ± std over seeds; "t": the paired t-test's p (`paired_p`, 3 decimals);
    "mcnemar": McNemar's exact p of each seed, comma-separated; "interval": the bootstrap's 95% interval
    of the difference ("-0.0100 … +0.0200"); "bootstrap": its p (`p_text`). The last three are "–"
    unless every run has its dev predictions. A table takes the cells it shows."""
    cells = {"difference": mean_std([x - y for x, y in zip(a, b)]), "t": fmt(paired_p(a, b), 3),
             "mcnemar": MISSING, "interval": MISSING, "bootstrap": MISSING}
    correct = [*(correct_a or []), *(correct_b or [])]
    if correct_a and correct_b and all(c is not None for c in correct):
        boot = bootstrap_difference(correct_a, correct_b)
        cells.update(mcnemar=", ".join(f"{mcnemar_p(x, y):.3g}" for x, y in zip(correct_a, correct_b)),
                     interval=f"{boot['low']:+.4f} … {boot['high']:+.4f}", bootstrap=p_text(boot))
    return cells
