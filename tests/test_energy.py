"""Energy per inference (pruning.deploy.energy, compress.time_variants): RAPL read from a fake powercap tree, wrap-around
counted, subzones not counted twice, no counter said plainly, and joules per 1,000 sentences from a fake counter."""
import numpy as np
import pytest

from pruning.deploy import energy


def zone(root, name, label, uj, top=1_000_000_000):
    d = root / name
    d.mkdir()
    (d / "name").write_text(label + "\n")
    (d / "energy_uj").write_text(f"{uj}\n")
    (d / "max_energy_range_uj").write_text(f"{top}\n")
    return d


def test_rapl_counts_packages_once_and_survives_a_wrap(tmp_path):
    p0 = zone(tmp_path, "intel-rapl:0", "package-0", 999_000_000)
    zone(tmp_path, "intel-rapl:0:0", "core", 5)  # a subzone: part of package-0's count
    p1 = zone(tmp_path, "intel-rapl:1", "package-1", 10_000_000)
    counter, text = energy.find_counter(tmp_path)
    assert counter is not None and text == "RAPL (package-0, package-1)"
    before = counter.read()
    assert before == [999_000_000, 10_000_000]
    (p0 / "energy_uj").write_text("2000000\n")   # wrapped: 1 J to the top, 2 J after
    (p1 / "energy_uj").write_text("14500000\n")  # 4.5 J
    assert counter.joules(before, counter.read()) == pytest.approx(3.0 + 4.5)


def test_no_counter_is_said_not_estimated(tmp_path):
    counter, text = energy.find_counter(tmp_path / "absent")
    assert counter is None and text.startswith(energy.NO_COUNTER)
    bad = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    (bad / "energy_uj").unlink()
    (bad / "energy_uj").mkdir()  # unreadable as a number: like a root-only file
    counter, text = energy.find_counter(tmp_path)
    assert counter is None and "not readable" in text


def test_joules_per_thousand_sentences_from_a_fake_counter():
    import compress

    class Fake:
        """Each read() moves on by the next step (microjoules), so each pass costs a known amount."""
        def __init__(self, steps):
            self.total, self.steps = 0, iter(steps)

        def read(self):
            self.total += next(self.steps)
            return [self.total]

        def joules(self, before, after):
            return (after[0] - before[0]) / 1e6

    batches = [{"input_ids": np.zeros((4, 3), dtype=np.int64)} for _ in range(3)]  # 12 sentences
    runners = {"dense · PyTorch fp32": lambda b: b, "pruned": lambda b: b}
    # reads: (before, after) per pass; rounds: dense 2 J, pruned 3 J; then dense 1 J, pruned 5 J
    steps = [0, 2_000_000, 0, 3_000_000, 0, 1_000_000, 0, 5_000_000]
    timed = compress.time_variants(runners, batches, batches[:1], 2, Fake(steps))
    assert timed["dense · PyTorch fp32"]["joules_per_1000"] == pytest.approx(1000 * 1 / 12)  # the least round
    assert timed["pruned"]["joules_per_1000"] == pytest.approx(1000 * 3 / 12)
    assert timed["pruned"]["rounds"]["joules"] == [3.0, 5.0]
    assert compress.time_variants(runners, batches, batches[:1], 1)["pruned"]["joules_per_1000"] is None
    with pytest.raises(ValueError):
        energy.joules_per_thousand(1.0, 0)
