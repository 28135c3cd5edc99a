"""Survival heatmaps and overlaps of to-fraction tickets on hand-built masks."""
import numpy as np
import pytest
import torch

from pruning.studies import heatmaps

P = "bert.encoder.layer"


def ticket(heads0, heads1, mlps):
    return {f"{P}.0.heads": torch.tensor(heads0), f"{P}.0.neurons": torch.full((3,), mlps[0]),
            f"{P}.1.heads": torch.tensor(heads1), f"{P}.1.neurons": torch.full((3,), mlps[1]),
            f"{P}.mlps": torch.tensor(mlps)}


A = ticket([True, True, False, False], [True, False, False, False], [True, False])
B = ticket([False, True, True, False], [True, False, False, False], [True, True])


def test_survival_grids_per_seed_and_over_seeds():
    heads, mlps = heatmaps.grids(A)
    assert heads.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]] and mlps.tolist() == [1, 0]
    heads, mlps = heatmaps.mean_grids([A, B])
    assert heads.tolist() == [[0.5, 1, 0.5, 0], [1, 0, 0, 0]] and mlps.tolist() == [1, 0.5]
    with pytest.raises(ValueError, match="structured"):
        heatmaps.grids({"bert.encoder.layer.0.attention.self.query.weight": torch.ones(2, 2, dtype=torch.bool)})


def test_overlaps_between_seeds_and_between_tasks_with_chance(tmp_path):
    rows = heatmaps.overlaps({"SST-2": {1: A, 2: B}, "CoLA": {1: A}})
    seeds = {r["kind"]: r for r in rows if r["between"] == "seeds"}
    assert seeds["heads"]["jaccard"] == pytest.approx(2 / 4)     # shared {0.1, 1.0} of {0.0, 0.1, 0.2, 1.0}
    assert seeds["heads"]["chance"] == pytest.approx(1.25 / (6 - 1.25))  # expected shared: 2*2/4 + 1*1/4
    assert seeds["mlps"]["jaccard"] == pytest.approx(1 / 2)
    tasks = [r for r in rows if r["between"] == "tasks"]
    assert {(r["a"], r["b"], r["seed_a"], r["seed_b"]) for r in tasks} == {("CoLA", "SST-2", 1, 1), ("CoLA", "SST-2", 1, 2)}
    assert [r["jaccard"] for r in tasks if r["seed_b"] == 1] == [1.0, 1.0]
    heatmaps.plot_survival({"SST-2": {1: A, 2: B}, "CoLA": {1: A}}, tmp_path / "survival.png")
    assert (tmp_path / "survival.png").stat().st_size > 5000
    weights = {"w": torch.tensor([True, False, True, True])}
    assert [r["kind"] for r in heatmaps.overlaps({"t": {1: weights, 2: weights}})] == ["weights"]
    assert np.isclose(heatmaps.overlaps({"t": {1: weights, 2: weights}})[0]["jaccard"], 1.0)
