"""pruning.studies.stats on hand-built cases with known answers: the paired t-test, McNemar's exact test, the
bootstrap over dev sentences, and the cells every paired table is written with."""
import numpy as np
import pytest
from scipy.stats import binomtest

from pruning.run import schema
from pruning.studies import stats


def test_paired_t_test_matches_the_hand_computed_value():
    # differences 0.01, 0.00, 0.02: mean 0.01, sd 0.01, t = 0.01 / (0.01 / sqrt 3) = sqrt 3, 2 degrees of freedom
    t = 3 ** 0.5
    assert stats.paired_p([0.87, 0.88, 0.89], [0.86, 0.88, 0.87]) == pytest.approx(1 - t / (t * t + 2) ** 0.5)
    assert stats.paired_p([0.9], [0.8]) is None


def test_mcnemar_and_the_sentence_bootstrap_on_hand_built_predictions():
    import numpy as np
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)   # right on 10 sentences b gets wrong,
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)   # wrong on 2 that b gets right
    assert stats.mcnemar_p(a, b) == pytest.approx(2 * (66 + 12 + 1) / 2 ** 12)   # 2 P(X >= 10), X ~ Bin(12, 1/2)
    assert stats.mcnemar_p(a, a) == 1.0
    same = stats.bootstrap_difference([a, b], [a, b])
    assert (same["difference"], same["low"], same["high"], same["p"]) == (0.0, 0.0, 0.0, 1.0)
    apart = stats.bootstrap_difference([a, a], [b, b])
    assert apart["difference"] == pytest.approx(8 / 50) and 0 < apart["low"] < 8 / 50 < apart["high"]
    assert apart["p"] < 0.05   # McNemar: 0.039 on the same 12 discordant sentences
    assert stats.p_text(apart) == f"{apart['p']:.3g}" and stats.p_text(same) == "1"
    far = stats.bootstrap_difference([a], [~a])   # b wrong wherever a is right: no resample reaches 0
    assert far["p"] == 0 and stats.p_text(far) == "< 0.0002"   # 2 / 10,000 resamples, not "p = 0"
    res = schema.parse({"dev_predictions": {"predicted": [1, 0, 1], "label": [1, 1, 1]}})
    assert stats.correct_on_dev(res).tolist() == [True, False, True] and stats.correct_on_dev(schema.parse({})) is None


def test_mcnemar_counts_only_the_discordant_sentences():
    # 7 sentences only a gets right, 1 only b, 40 both and 12 neither: Bin(8, 1/2), 2 P(X >= 7) = 2 * 9 / 256
    a = np.array([True] * 7 + [False] * 1 + [True] * 40 + [False] * 12)
    b = np.array([False] * 7 + [True] * 1 + [True] * 40 + [False] * 12)
    assert stats.mcnemar_p(a, b) == pytest.approx(18 / 256)
    assert stats.mcnemar_p(a, b) == binomtest(7, 8, 0.5).pvalue == stats.mcnemar_p(b, a)
    assert stats.mcnemar_p(a.astype(int).tolist(), b) == stats.mcnemar_p(a, b)   # 0/1 lists read as booleans
    with pytest.raises(ValueError, match="same sentences"):
        stats.mcnemar_p(a, b[:-1])


def test_paired_t_test_edge_cases():
    assert stats.paired_p([0.9, 0.8, 0.7], [0.8, 0.7, 0.6]) is None   # every difference the same: no spread
    with pytest.raises(ValueError, match="pairs"):
        stats.paired_p([0.9, 0.8], [0.8])


def test_bootstrap_p_text_and_errors():
    assert stats.p_text({"p": 0.0, "resamples": 2000}) == "< 0.001"
    assert stats.p_text({"p": 0.012345, "resamples": 2000}) == "0.0123"
    a = np.array([True, False, True, True])
    assert stats.bootstrap_difference([a], [a], resamples=2000)["resamples"] == 2000
    with pytest.raises(ValueError, match="paired"):
        stats.bootstrap_difference([a, a], [a])
    with pytest.raises(ValueError, match="same dev examples"):
        stats.bootstrap_difference([a], [a[:3]])


def test_mean_std_and_cell_formatting():
    assert stats.mean_std([0.8, None, 0.9]) == "0.8500 ± 0.0707"   # sample std: 0.1 / sqrt 2
    assert stats.mean_std([0.5]) == "0.5000" and stats.mean_std([None]) == "–"
    assert [stats.fmt(x) for x in (None, True, False, 3, 0.25)] == ["–", "yes", "no", "3", "0.2500"]
    assert stats.fmt(0.5, 1) == "0.5"


def test_paired_cells_are_the_tests_above_as_table_text():
    a = np.array([True] * 10 + [False] * 2 + [True] * 30 + [False] * 8)
    b = np.array([False] * 10 + [True] * 2 + [True] * 30 + [False] * 8)
    cells = stats.paired_cells([0.87, 0.88, 0.89], [0.86, 0.88, 0.87], [a, a, b], [b, b, b])
    boot = stats.bootstrap_difference([a, a, b], [b, b, b])
    assert cells == {"difference": "0.0100 ± 0.0100", "t": f"{stats.paired_p([0.87, 0.88, 0.89], [0.86, 0.88, 0.87]):.3f}",
                     "mcnemar": f"{stats.mcnemar_p(a, b):.3g}, {stats.mcnemar_p(a, b):.3g}, 1",
                     "interval": f"{boot['low']:+.4f} … {boot['high']:+.4f}", "bootstrap": stats.p_text(boot)}
    # one run without its dev predictions: no sentence-level test, the seed-level ones still
    lacking = stats.paired_cells([0.87, 0.88], [0.86, 0.88], [a, None], [b, b])
    assert lacking == {"difference": "0.0050 ± 0.0071", "t": "0.500", "mcnemar": "–", "interval": "–",
                       "bootstrap": "–"}
    assert stats.paired_cells([0.9], [0.8])["t"] == "–"


def test_bootstrap_of_matthews_correlation_on_a_hand_built_case():
    # 4 positives, 4 negatives. A: 3 TP, 1 FN, 3 TN, 1 FP: MCC = (3·3 − 1·1) / sqrt(4·4·4·4) = 0.5.
    # B: 2 of each: MCC = (2·2 − 2·2) / 16 = 0.
    label = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    a = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    b = np.array([1, 1, 0, 0, 0, 0, 1, 1])
    boot = stats.bootstrap_difference([(a, label)], [(b, label)], "matthews_correlation", resamples=1000)
    assert boot["difference"] == pytest.approx(0.5) and boot["resamples"] == 1000   # sklearn's MCC is never undefined
    assert boot["low"] <= 0.5 <= boot["high"] and 0 < boot["p"] <= 1
    with pytest.raises(ValueError, match="needs each run's"):      # right/wrong arrays carry no MCC
        stats.bootstrap_difference([a == label], [b == label], "matthews_correlation")
    with pytest.raises(ValueError, match="same dev examples"):
        stats.bootstrap_difference([(a, label)], [(b, 1 - label)], "matthews_correlation")


def test_bootstrap_of_pearson_on_float_predictions_matches_scipy_resample_by_resample():
    from scipy.stats import pearsonr
    label = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    a = [np.array([0.0, 1.0, 2.0, 4.0, 3.0]), np.array([1.0, 0.0, 3.0, 2.0, 4.0])]   # r = 9/10 and 8/10 by hand
    b = [np.array([2.0, 1.0, 0.0, 3.0, 4.0]), label.copy()]                          # r = 6/10 and 1
    boot = stats.bootstrap_difference([(x, label) for x in a], [(x, label) for x in b], "pearson", resamples=1000)
    assert boot["difference"] == pytest.approx(((0.9 - 0.6) + (0.8 - 1.0)) / 2)
    # the same resamples (numpy's default_rng(0), one batch of 1,000), each difference computed with scipy directly;
    # a resample of one example repeated has no correlation and is left out
    idx = np.random.default_rng(0).integers(0, 5, (1000, 5))
    kept = [i for i in idx if len(set(i)) > 1]
    expected = [np.mean([pearsonr(x[i], label[i])[0] - pearsonr(y[i], label[i])[0] for x, y in zip(a, b)])
                for i in kept]
    assert boot["resamples"] == len(kept) < 1000
    assert (boot["low"], boot["high"]) == pytest.approx(tuple(np.percentile(expected, [2.5, 97.5])))
    expected = np.array(expected)
    assert boot["p"] == pytest.approx(min(1.0, 2 * min((expected <= 0).mean(), (expected >= 0).mean())))


def test_paired_cells_of_a_regression_have_no_mcnemar(monkeypatch):
    monkeypatch.setattr(stats, "METRIC_RESAMPLES", 1000)
    label = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    a, b = np.array([0.0, 1.0, 2.0, 4.0, 3.0]), np.array([2.0, 1.0, 0.0, 3.0, 4.0])
    cells = stats.paired_cells([0.9, 0.9], [0.6, 0.6], [(a, label)] * 2, [(b, label)] * 2, "pearson")
    boot = stats.bootstrap_difference([(a, label)] * 2, [(b, label)] * 2, "pearson")
    assert cells["mcnemar"] == stats.NO_MCNEMAR and cells["bootstrap"] == stats.p_text(boot)
    assert cells["interval"] == f"{boot['low']:+.4f} … {boot['high']:+.4f}"
    assert stats.paired_cells([0.9], [0.6], metric="pearson")["mcnemar"] == stats.NO_MCNEMAR
    run = schema.parse({"task": {"headline": "pearson"}, "dev_predictions": {"predicted": [0.5], "label": [0.5]}})
    assert stats.correct_on_dev(run) is None and stats.dev_outputs(run)[0].tolist() == [0.5]
