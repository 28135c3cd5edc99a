"""The agent's action space with whole MLPs and whole layers (issue 23): every episode removes exactly the
budget of each kind, layer 0 stays where the family keeps it, the pipeline's per-layer 0/1 MLP_RATE /
LAYER_RATE remove exactly the MLPs and layers the search pruned, the uniform allocation of a whole kind is
the pipeline's own pick by score, and allocate.py runs the comparison end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY, run_script, tiny_args, write_slice
from pruning.core.units import PrunableUnits
from pruning.run import schema
from pruning.run.checkpoint import read_run_masks
from pruning.run.pruning_config import PruningConfig
from pruning.settings import ConfigError, _parse_value
from pruning.studies import allocation
from test_whole_units import LAYERS, tiny

RATES = {"head": 0.25, "neuron": 0.4, "mlp": 1 / 3, "layer": 1 / 3}  # of 3 layers: one MLP and one layer go


def budget_of(model, rates=RATES):
    whole = tuple(k for k in ("mlp", "layer") if k in rates)
    units = PrunableUnits(model, "heads+neurons", whole)
    return units, allocation.Budget.of(units, rates, max_rate=0.9)


def scores_of(units, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = {n: torch.rand(grp.shape, generator=g) for n, grp in units.groups.items()}
    return {**scores, **units.whole_scores(scores)}


def random_episode(env, rng):
    env.reset()
    done = False
    while not done:
        _, _, done, _, info = env.step(np.array([rng.choice([-1.0, 0.0, 1.0, rng.uniform(-1, 1)])], np.float32))
    return info["counts"]


def test_whole_kinds_are_one_step_per_layer_and_every_episode_meets_their_budget():
    units, budget = budget_of(tiny("bert"))
    assert [s.name for s in budget.steps[:4]] == ["layer0.heads", "layer0.neurons", "layer0.mlps", "layer0.layers"]
    assert {s.kind: (s.size, s.most) for s in budget.steps if s.kind in ("mlp", "layer")} == \
        {"mlp": (1, 1), "layer": (1, 1)}
    assert budget.remove["mlp"] == budget.remove["layer"] == 1
    env = allocation.AllocationEnv(budget, lambda counts: 0.0)
    assert env.observation_space.shape == (9 + 5,)  # head, neuron, weight, mlp, layer flags
    rng = np.random.default_rng(0)
    chosen = set()
    for _ in range(60):
        counts = random_episode(env, rng)
        budget.check(counts)
        chosen.add(tuple(counts[f"layer{i}.layers"] for i in range(LAYERS)))
    assert len(chosen) > 1  # the agent really chooses which layer goes


def test_without_whole_rates_the_observation_is_what_it_was():
    _, budget = budget_of(tiny("bert"), {"head": 0.25, "neuron": 0.4})
    assert allocation.AllocationEnv(budget, lambda c: 0.0).observation_space.shape == (12,)


@pytest.mark.parametrize("family", ["modernbert", "deberta-v3"])
def test_a_first_layer_the_family_keeps_is_never_allocated_away(family):
    units, budget = budget_of(tiny(family), {"head": 0.25, "neuron": 0.4, "layer": 2 / 3})
    assert next(s for s in budget.steps if s.name == "layer0.layers").most == 0
    env = allocation.AllocationEnv(budget, lambda counts: 0.0)
    rng = np.random.default_rng(1)
    for _ in range(30):
        counts = random_episode(env, rng)
        assert counts["layer0.layers"] == 0 and counts["layer1.layers"] == counts["layer2.layers"] == 1
    assert budget.uniform(scores_of(units))["layer0.layers"] == 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_pipeline_removes_exactly_the_mlps_and_layers_the_search_pruned(seed):
    """budget.rates -> per-layer 0/1 MLP_RATE and LAYER_RATE -> PruningConfig.select: the same masks as the
    search's (`masks_for`, carried down by `compose`), and the pruned model has those layers and MLPs."""
    model = tiny("bert")
    units, budget = budget_of(model)
    scores = scores_of(units, seed)
    counts = random_episode(allocation.AllocationEnv(budget, lambda c: 0.0), np.random.default_rng(seed))
    rates = budget.rates(counts)
    assert set(rates["layer"]) <= {0.0, 1.0} and sum(rates["layer"]) == 1
    config = PruningConfig(granularity="heads+neurons", head_rate=rates["head"], neuron_rate=rates["neuron"],
                           mlp_rate=tuple(int(r) for r in rates["mlp"]), layer_rate=tuple(int(r) for r in rates["layer"]))
    config.check_model(units)
    pipeline = config.select(units, scores)
    searched = units.compose(allocation.masks_for(counts, scores, budget))
    assert all(torch.equal(pipeline[n], searched[n]) for n in units.mask_groups)
    gone = [i for i in range(LAYERS) if counts[f"layer{i}.layers"]]
    reward = allocation.SliceReward(model, "heads+neurons", scores, budget, batches=[])
    pruned = reward.pruned(counts)
    assert pruned.config.num_hidden_layers == LAYERS - len(gone)
    kept = [i for i in range(LAYERS) if i not in gone]
    mlp_gone = [i for i in kept if counts[f"layer{i}.mlps"]]
    sizes = [layer.intermediate.dense.out_features for layer in pruned.bert.encoder.layer]
    assert [s == 0 for s in sizes] == [i in mlp_gone for i in kept]


def test_the_uniform_allocation_of_whole_kinds_is_the_pipelines_pick_by_score():
    units, budget = budget_of(tiny("bert"))
    scores = scores_of(units, 3)
    uniform = budget.uniform(scores)
    pipeline = PruningConfig(granularity="heads+neurons", head_rate=0.25, neuron_rate=0.4, mlp_rate=1 / 3,
                             layer_rate=1 / 3).select(units, scores)
    layer_gone = [uniform[f"layer{i}.layers"] for i in range(LAYERS)]
    for kind in ("mlp", "layer"):
        group = units.whole_group(kind).name
        picked = [uniform[f"layer{i}.{kind}s"] for i in range(LAYERS)]
        expected = [p | g for p, g in zip(picked, layer_gone)]  # a removed layer takes its MLP along (compose)
        assert expected == (~pipeline[group]).int().tolist()
        assert picked[int(torch.argmin(scores[group]))] == 1 and sum(picked) == 1
    assert all(f"layer{i}.layers" not in budget.uniform() for i in range(LAYERS))  # no scores: no pick
    global_ = allocation.global_rates(scores, budget)
    assert all(global_[f"layer{i}.layers"] == uniform[f"layer{i}.layers"] for i in range(LAYERS))


@pytest.mark.parametrize("rate,message", [((0, 1, 2), "each 0"), ((0.5, 0, 0), "each 0"),
                                          ((), "each 0"), ((True, 0, 0), "each 0")])
def test_per_layer_whole_rates_are_zeros_and_ones(rate, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(granularity="heads+neurons", layer_rate=rate)


def test_per_layer_whole_rates_are_checked_against_the_model():
    units = PrunableUnits(tiny("bert"), "heads+neurons", ("layer",))
    with pytest.raises(ValueError, match="one 0/1 per layer"):
        PruningConfig(granularity="heads+neurons", layer_rate=(0, 1)).check_model(units)
    with pytest.raises(ValueError, match="would remove all 3 encoder layers"):
        PruningConfig(granularity="heads+neurons", layer_rate=(1, 1, 1)).check_model(units)
    modern = PrunableUnits(tiny("modernbert"), "heads+neurons", ("layer",))
    with pytest.raises(ValueError, match="removes layer 0"):
        PruningConfig(granularity="heads+neurons", layer_rate=(1, 0, 0)).check_model(modern)
    assert PruningConfig(granularity="heads+neurons", layer_rate=(0, 0, 0)).whole_kinds == ()
    assert _parse_value("LAYER_RATE", "0.0,1.0,0.0", 0.0, {}) == (0, 1, 0)
    assert _parse_value("HEAD_RATE", "0.0,1.0", 0.0, {}) == (0.0, 1.0)
    with pytest.raises(ConfigError):
        _parse_value("MLP_RATE", "0,x", 0.0, {})


# --- the script ------------------------------------------------------------------------------------
def test_allocate_allocates_whole_layers_and_mlps_end_to_end(tmp_path, tiny_bert_config):
    """allocate.py with LAYER_RATE and MLP_RATE on a 3-layer model: the agent's run removes exactly the layer and
    MLP it chose (its per-layer 0/1 rates), the uniform run those the pipeline picks by score (as the search's
    uniform reference), and the report lists the whole kinds per layer."""
    data = write_slice(tmp_path / "sst2", 300, 60)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**json.loads(Path(tiny_bert_config).read_text()), **TINY, "num_hidden_layers": 3,
                                  "num_attention_heads": 4}))
    out = tmp_path / "out"
    args = [*(a for a in tiny_args(config, data, out) if not a.startswith("--measure_speed")), "--seeds=1",
            "--episodes=8", "--episodes_per_update=4", "--held_out=48", "--head_rate=0.25", "--mlp_rate=0.34",
            "--layer_rate=0.34", "--allocations=agent,uniform", "--measure_speed=false"]
    proc = run_script("allocate.py", args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "allocation.json").read_text())
    assert result["budget"]["mlp"] == result["budget"]["layer"] == 1
    for name, counts in (("agent", result["counts"]), ("uniform", result["uniform_counts"])):
        masks = read_run_masks(str(out / f"{name}-s1"))[0]
        layer_gone = [counts[f"layer{i}.layers"] for i in range(3)]
        assert (~masks["bert.encoder.layer.layers"]).int().tolist() == layer_gone, name
        mlp_gone = [counts[f"layer{i}.mlps"] | g for i, g in enumerate(layer_gone)]  # a layer takes its MLP along
        assert (~masks["bert.encoder.layer.mlps"]).int().tolist() == mlp_gone, name
        structure = schema.read(out / f"{name}-s1").pruning.structure
        assert structure.layers_kept == [i for i in range(3) if not layer_gone[i]]
    text = (out / "allocate.md").read_text()
    assert "layers [" in text and "mlps [" in text


def test_the_iterative_mode_refuses_whole_kinds(tmp_path, tiny_bert_config, capsys):
    import allocate
    data = write_slice(tmp_path / "sst2", 40, 20)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        allocate.main([*tiny_args(tiny_bert_config, data, out), "--mode=iterative", "--layer_rate=0.5",
                       "--latency_budget=0.5"])
    assert stop.value.code == 2 and "MODE=episodes" in capsys.readouterr().err
    assert not out.exists()
