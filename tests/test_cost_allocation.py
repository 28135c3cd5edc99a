"""allocate.py's cost-aware reward (pruning.studies.allocation.CompositeReward), the measured costs cached by
structure (pruning.deploy.inference_cost) and the iterative mode (pruning.studies.iterative), on tiny models and
hand-built cases with known answers."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForSequenceClassification

from conftest import TINY, run_script, tiny_args, write_slice
from pruning.core.units import PrunableUnits
from pruning.deploy import inference_cost
from pruning.deploy.inference_cost import CostCache, CostMeter, structure_key
from pruning.studies import allocation, iterative

HEADS4 = {**TINY, "num_attention_heads": 4}


def tiny_model(layers: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=100, **{**HEADS4, "num_hidden_layers": layers})).eval()


def scores_of(model, seed: int = 7) -> dict[str, torch.Tensor]:
    units = PrunableUnits(model, "heads+neurons")
    return {n: torch.rand(g.shape, generator=torch.Generator().manual_seed(seed + i))
            for i, (n, g) in enumerate(units.groups.items())}


def batches(n: int = 16, length: int = 10, seed: int = 0, batch_size: int = 8) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 100, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::2, length // 2:] = 0  # every other sentence half padding
    return [{"input_ids": ids[i:i + batch_size], "attention_mask": mask[i:i + batch_size],
             "labels": torch.zeros(min(batch_size, n - i), dtype=torch.long)} for i in range(0, n, batch_size)]


class FakeMeter:
    """A cost 'measurement' that counts its calls and returns figures fixed per structure."""

    def __init__(self, latency: dict[str, float] | None = None, of_key=None):
        self.latency, self.of_key, self.calls = latency or {}, of_key, []

    def __call__(self, model):
        key = structure_key(model)
        self.calls.append(key)
        ms = self.of_key(key) if self.of_key else self.latency.get(key, 10.0)
        return {"latency_ms": ms, "sentences_per_second": 1000 / ms, "peak_memory_mb": ms, "model_mb": 1.0}


def two_candidates():
    """A 3-layer model, a budget of 3 heads and 77 neurons, and two allocations of it with different
    structures: A spreads it evenly (uniform), B puts all the neurons it can in the last layer."""
    model = tiny_model()
    budget = allocation.Budget.of(PrunableUnits(model, "heads+neurons"), {"head": 1 / 3, "neuron": 0.4}, 0.9)
    a = budget.uniform()
    b = {**a, "layer0.neurons": 0, "layer1.neurons": 77 - 57, "layer2.neurons": 57}
    budget.check(b)
    reward = allocation.SliceReward(model, "heads+neurons", scores_of(model), budget, batches())
    return model, budget, reward, a, b


def keys(reward, *allocations):
    return [structure_key(reward.pruned(c)) for c in allocations]


@pytest.mark.parametrize("weight,winner", [(0.01, "A"), (0.1, "B")])
def test_a_faster_less_accurate_candidate_wins_or_loses_as_the_weight_says(weight, winner):
    """A: metric 0.90 at 0.8 of dense latency; B: 0.88 at 0.5. Weight 0.01: A 0.892 > B 0.875; weight 0.1:
    A 0.82 < B 0.83."""
    model, budget, reward, a, b = two_candidates()
    key_a, key_b = keys(reward, a, b)
    assert key_a != key_b
    metric = {key_a: 0.90, key_b: 0.88}
    meter = FakeMeter({key_a: 8.0, key_b: 5.0})
    dense = meter(model)
    composite = allocation.CompositeReward(reward.pruned, lambda m: metric[structure_key(m)], CostCache(meter), dense,
                                           "latency", weight)
    history = [{"counts": c, **composite(c)} for c in (a, b)]
    assert [h["cost_ratio"] for h in history] == pytest.approx([0.8, 0.5])
    assert [h["reward"] for h in history] == pytest.approx([0.90 - weight * 0.8, 0.88 - weight * 0.5])
    assert allocation.best(history)["counts"] == (a if winner == "A" else b)


def test_a_candidate_over_the_latency_budget_is_never_chosen():
    model, budget, reward, a, b = two_candidates()
    key_a, key_b = keys(reward, a, b)
    metric = {key_a: 0.95, key_b: 0.80}
    meter = FakeMeter({key_a: 8.0, key_b: 5.0})
    composite = allocation.CompositeReward(reward.pruned, lambda m: metric.get(structure_key(m), 0.5),
                                           CostCache(meter), meter(model), "latency", 0.0, budget=0.6)
    over, within = composite(a), composite(b)
    assert not over["within_budget"] and within["within_budget"]
    assert over["reward"] == pytest.approx(0.95 - allocation.OVER_BUDGET - 0.2) and over["reward"] < within["reward"]
    assert allocation.best([{"counts": a, **over}, {"counts": b, **within}])["counts"] == b
    with pytest.raises(ValueError, match="LATENCY_BUDGET"):
        allocation.best([{"counts": a, **over}])
    # Random episodes through the environment, the latency falling with the last layer's neurons (10 ms at all 64,
    # 3 ms at none): the best is always within the budget, and the best of those.
    meter = FakeMeter(of_key=lambda key: 10.0 * (0.3 + 0.7 * int(key.split("n")[-1]) / 64))
    composite = allocation.CompositeReward(reward.pruned, reward.evaluate, CostCache(meter), meter(model), "latency",
                                           0.0, budget=0.6)
    env = allocation.AllocationEnv(budget, composite)
    rng = np.random.default_rng(0)
    for _ in range(40):
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(np.array([rng.uniform(-1, 1)], dtype=np.float32))
    assert any(not h["within_budget"] for h in env.history) and any(h["within_budget"] for h in env.history)
    chosen = allocation.best(env.history)
    assert chosen["within_budget"]
    assert chosen["reward"] == max(h["reward"] for h in env.history if h["within_budget"])


def test_costs_are_measured_once_per_structure_and_cached_on_disk(tmp_path):
    model, budget, reward, a, b = two_candidates()
    meter = FakeMeter({})
    cache = CostCache(meter, tmp_path / "costs.json", meta={"repeats": 3})
    other = allocation.SliceReward(model, "heads+neurons", scores_of(model, seed=99), budget, batches())
    first, same_structure = reward.pruned(a), other.pruned(a)  # other units removed, the same counts per layer
    assert any(not torch.equal(p, q) for p, q in zip(first.parameters(), same_structure.parameters()))
    figures = cache(first)
    assert cache(same_structure) == figures and cache(first) == figures
    assert len(meter.calls) == 1
    cache(reward.pruned(b))
    cache(model)
    assert len(meter.calls) == 3 and cache.measured == 3
    saved = json.loads((tmp_path / "costs.json").read_text())
    assert len(saved["costs"]) == 3 and saved["meta"] == {"repeats": 3}
    again = CostCache(meter, tmp_path / "costs.json", meta={"repeats": 3})  # a resumed search
    assert again(same_structure) == figures and len(meter.calls) == 3 and again.measured == 0
    with pytest.raises(ValueError, match="other settings"):
        CostCache(meter, tmp_path / "costs.json", meta={"repeats": 5})


def test_the_composite_reward_measures_each_structure_once_through_the_environment():
    model, budget, reward, a, b = two_candidates()
    meter = FakeMeter({})
    composite = allocation.CompositeReward(reward.pruned, reward.evaluate, CostCache(meter), meter(model), "latency",
                                           0.05)
    env = allocation.AllocationEnv(budget, composite)
    for _ in range(3):  # the uniform allocation (action 0) three times: one structure
        env.reset()
        done = False
        while not done:
            _, _, done, _, _ = env.step(np.zeros(1, dtype=np.float32))
    assert len(meter.calls) == 2 and composite.calls == 3  # the dense model, then uniform's structure once
    assert all(h["metric"] == reward(budget.uniform()) for h in env.history)


def test_the_structure_key_reads_each_layers_live_units():
    model, budget, reward, a, b = two_candidates()
    assert structure_key(model) == "h4 n64|h4 n64|h4 n64"
    assert structure_key(reward.pruned(b)) == "h3 n64|h3 n44|h3 n7"


def test_the_meter_measures_the_pruned_model_smaller_than_dense():
    model, budget, reward, a, b = two_candidates()
    meter = CostMeter(batches(), single=4, repeats=3)
    assert [x["input_ids"].shape for x in meter.single] == [(1, 5)] * 4  # sentences 0, 4, 8, 12, without padding
    spread = CostMeter(batches(), single=3).single  # sentences 0, 5, 10
    assert [x["input_ids"].shape for x in spread] == [(1, 5), (1, 10), (1, 5)]
    dense, pruned = meter(model), meter(reward.pruned(b))
    for figures in (dense, pruned):
        assert figures["latency_ms"] > 0 and figures["sentences_per_second"] > 0
    assert pruned["model_mb"] < dense["model_mb"]
    # The forward's peak: deterministic, and smaller with fewer heads and neurons.
    largest = meter.largest
    peak_dense = inference_cost.peak_forward_bytes(model, largest)
    assert peak_dense == inference_cost.peak_forward_bytes(model, largest) > 0
    assert inference_cost.peak_forward_bytes(reward.pruned(b), largest) < peak_dense
    assert dense["peak_memory_mb"] == pytest.approx((inference_cost.memory_bytes(model) + peak_dense) / 2 ** 20)


class FakeClock:
    """Time that only the fake models advance, under a load that grows by one every timing round pair
    (4 clock readings a round: 8 for the candidate's round and the reference's)."""

    def __init__(self):
        self.t, self.readings = 0.0, 0

    def __call__(self):
        self.readings += 1
        return self.t

    @property
    def load(self):
        return 1 + max(self.readings - 4, 0) // 8


class Timed(torch.nn.Module):
    """A 'model' whose forward costs `seconds` per sentence times the clock's load, and allocates one tensor."""

    def __init__(self, clock, seconds):
        super().__init__()
        self.clock, self.seconds, self.w = clock, seconds, torch.nn.Parameter(torch.zeros(3))

    def forward(self, input_ids, attention_mask=None):
        self.clock.t += self.seconds * len(input_ids) * self.clock.load
        return torch.zeros(len(input_ids), 256)


def test_ratios_to_dense_are_per_round_so_a_changing_load_cancels_out():
    clock = FakeClock()
    meter = CostMeter(batches(), single=4, repeats=3, reference=Timed(clock, 2e-3), clock=clock)
    figures = meter(Timed(clock, 1e-3))
    assert figures["latency_ratio"] == pytest.approx(0.5) and figures["throughput_ratio"] == pytest.approx(0.5)
    assert figures["latency_ms"] == pytest.approx(2.0)  # the median round ran under load 2
    assert figures["sentences_per_second"] == pytest.approx(16 / (16 * 1e-3 * 2))
    dense = {"latency_ms": 1.0, "sentences_per_second": 1.0, "peak_memory_mb": 1.0}  # the medians are not used
    assert inference_cost.cost_ratio(figures, dense, "latency") == pytest.approx(0.5)
    assert inference_cost.cost_ratio(figures, dense, "throughput") == pytest.approx(0.5)
    # its weights and its one allocation, for the largest batch (8 sentences)
    assert figures["peak_memory_mb"] == pytest.approx((3 * 4 + 8 * 256 * 4) / 2 ** 20)


def test_cost_ratios_are_cheaper_below_one():
    dense = {"latency_ms": 10.0, "sentences_per_second": 100.0, "peak_memory_mb": 50.0}
    fast = {"latency_ms": 5.0, "sentences_per_second": 400.0, "peak_memory_mb": 40.0}
    assert [inference_cost.cost_ratio(fast, dense, c) for c in ("latency", "throughput", "memory")] == [0.5, 0.25, 0.8]
    with pytest.raises(ValueError, match="unknown cost"):
        inference_cost.cost_ratio(fast, dense, "energy")


# --- the iterative mode ---------------------------------------------------------------------------
def train_rows(n: int = 32) -> Dataset:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (n, 8), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 8] * n,
                              "label": (ids[:, 0] % 2).tolist()})


def collate(rows):
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
            "attention_mask": torch.tensor([r["attention_mask"] for r in rows]),
            "labels": torch.tensor([r["label"] for r in rows])}


def neuron_share(model) -> float:
    units = PrunableUnits(model, "heads+neurons")
    return sum(units.live_size(n) for n, g in units.groups.items() if g.kind == "neuron") / 192


class Killed(Exception):
    pass


class Loop:
    """The loop's callables on a tiny model: the uniform split of each step's budget, real fine-tuning
    (HF Trainer, seeded by the step), a metric and a cost that fall with the neurons left."""

    def __init__(self, tmp: Path, die_at: int | None = None):
        self.tmp, self.die_at, self.finetuned, self.changed = tmp, die_at, [], []

    def allocate(self, k, model, budget, scores):
        return budget.uniform()

    def finetune(self, k, model):
        if k == self.die_at:
            raise Killed  # killed between steps: after step k-1's state was written
        before = [p.detach().clone() for p in model.parameters()]
        iterative.finetune(model, train_rows(), collate, 2, 1e-2, 8, seed=k, output_dir=self.tmp / "ft")
        self.finetuned.append(k)
        self.changed.append(any(not torch.equal(a, b) for a, b in zip(before, model.parameters())))

    def evaluate(self, model):
        return neuron_share(model)

    def cost(self, model):
        return neuron_share(model), {"latency_ms": neuron_share(model)}


def run_loop(directory, settings, loop, model=None):
    model = model if model is not None else tiny_model()
    pruning = iterative.IterativePruning(model, directory, settings, loop.allocate, loop.finetune, loop.evaluate,
                                         loop.cost)
    return pruning, pruning.run()


def test_each_step_removes_the_step_rate_of_what_is_left_fine_tunes_and_stops_at_the_floor(tmp_path):
    loop = Loop(tmp_path)
    settings = iterative.IterativeSettings(step_rate=0.1, finetune_steps=2, accuracy_floor=0.7)
    pruning, state = run_loop(tmp_path / "it", settings, loop)
    steps = state["steps"]
    assert steps[0]["left"] == {"head": 12, "neuron": 192} and steps[0]["removed"] == {}
    for before, after in zip(steps, steps[1:]):
        for kind in ("head", "neuron"):
            assert after["removed"][kind] == round(0.1 * before["left"][kind])
            assert after["left"][kind] == before["left"][kind] - after["removed"][kind]
    assert [s["left"]["neuron"] for s in steps] == [192, 173, 156, 140, 126]  # 126 / 192 = 0.656 < 0.7: the floor
    assert [s["left"]["head"] for s in steps] == [12, 11, 10, 9, 8]
    assert loop.finetuned == [1, 2, 3, 4] and all(loop.changed)
    assert state["stopped"] == "floor" and state["result_step"] == 3
    kept = state["result_kept"]
    assert sum(len(kept[n]) for n in kept if n.endswith("neurons")) == 140
    removed = pruning.removed_per_step(state, allocation.Budget.of(
        PrunableUnits(tiny_model(), "heads+neurons"), {"head": 0.25, "neuron": 0.4}, 0.9).steps)
    assert sum(v for k, v in removed.items() if k.endswith("neurons")) == 192 - 140
    assert sum(v for k, v in removed.items() if k.endswith("heads")) == 12 - 9
    assert (tmp_path / "it" / "step-3.safetensors").exists() and not (tmp_path / "it" / "step-2.safetensors").exists()
    assert run_loop(tmp_path / "it", settings, Loop(tmp_path))[1] == state  # a finished loop is read back


def test_the_loop_stops_at_the_cost_budget(tmp_path):
    settings = iterative.IterativeSettings(step_rate=0.1, finetune_steps=2, cost_budget=0.75)
    _, state = run_loop(tmp_path / "it", settings, Loop(tmp_path))
    assert state["stopped"] == "budget" and state["result_step"] == 3  # 140 / 192 = 0.729 <= 0.75
    assert state["steps"][-1]["cost_ratio"] == pytest.approx(140 / 192)


def test_a_loop_killed_between_steps_resumes_and_ends_as_the_uninterrupted_one(tmp_path):
    settings = iterative.IterativeSettings(step_rate=0.1, finetune_steps=2, accuracy_floor=0.7)
    whole, whole_state = run_loop(tmp_path / "whole", settings, Loop(tmp_path))
    with pytest.raises(Killed):
        run_loop(tmp_path / "killed", settings, Loop(tmp_path, die_at=3))
    saved = json.loads((tmp_path / "killed" / "iterative.json").read_text())
    assert [s["step"] for s in saved["steps"]] == [0, 1, 2] and not saved.get("stopped")
    again = Loop(tmp_path)
    resumed, state = run_loop(tmp_path / "killed", settings, again)
    assert again.finetuned == [3, 4]  # only the steps left
    strip = lambda st: {k: v for k, v in st.items() if k != "seconds"}  # noqa: E731
    assert strip(state) == strip(whole_state)
    weights = zip(resumed.model.state_dict().values(), whole.model.state_dict().values())
    assert all(torch.equal(p, q) for p, q in weights)
    with pytest.raises(ValueError, match="other settings"):
        run_loop(tmp_path / "killed", iterative.IterativeSettings(step_rate=0.2, accuracy_floor=0.7), Loop(tmp_path))


def test_a_step_budget_is_the_share_of_the_live_units_over_the_whole_model():
    model = tiny_model()
    units = PrunableUnits(model, "heads+neurons")
    budget = allocation.Budget.of_share(units, 0.1, 0.9)
    assert budget.remove == {"head": 1, "neuron": 19}  # round(1.2), round(19.2): not per-layer rounding
    keep = {n: torch.ones(g.size, dtype=torch.bool) for n, g in units.groups.items()}
    keep["bert.encoder.layer.0.neurons"][:60] = False  # layer 0 keeps 4 neurons
    from pruning.core.surgery import remove_units
    remove_units(units, keep)
    live = allocation.Budget.of_share(PrunableUnits(model, "heads+neurons"), 0.1, 0.9)
    assert [s.size for s in live.kind_steps("neuron")] == [4, 64, 64] and live.remove["neuron"] == 13
    assert live.kind_steps("neuron")[0].most == 3
    with pytest.raises(ValueError, match="STEP_RATE"):
        allocation.Budget.of_share(units, 1.0, 0.9)


# --- the script ------------------------------------------------------------------------------------
def test_the_iterative_study_runs_and_hands_its_allocation_to_the_pipeline(tmp_path, tiny_bert_config):
    data = write_slice(tmp_path / "sst2", 400, 100)
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({**json.loads(Path(tiny_bert_config).read_text()), **HEADS4}))
    out = tmp_path / "out"
    args = [a for a in tiny_args(config, data, out) if not a.startswith("--measure_speed")]
    args += ["--seeds=1", "--allocations=agent,uniform", "--held_out=64", "--head_rate=0.25", "--mode=iterative",
             "--cost=throughput", "--cost_weight=0.05", "--latency_budget=0.01", "--max_steps=2",
             "--step_episodes=4", "--episodes_per_update=2", "--finetune_steps=2", "--cost_sentences=32",
             "--cost_repeats=1", "--measure_speed=false"]
    proc = run_script("allocate.py", args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "allocation.json").read_text())
    assert result["mode"] == "iterative" and result["stopped"] == "max_steps" and result["result_step"] == 2
    assert [s["left"]["neuron"] for s in result["iterative"]] == [128, 115, 103]  # 2 layers x 64, 10% a step
    assert result["episodes"] == 8 and set(result["costs"]) == {"dense", "agent", "uniform", "global"}
    assert json.loads((out / "costs.json").read_text())["meta"]["repeats"] == 1
    from pruning.run.checkpoint import read_run_masks
    masks = read_run_masks(str(out / "agent-s1"))[0]
    for step, count in result["counts"].items():  # the iterative result's per-layer counts, exactly
        layer, kind = step.split(".")
        assert int((~masks[f"bert.encoder.layer.{layer.removeprefix('layer')}.{kind}"]).sum()) == count
    assert sum(v for k, v in result["counts"].items() if k.endswith("neurons")) == 128 - 103
    text = (out / "allocate.md").read_text()
    assert "Iterative search" in text and "| agent |" in text and "| dense |" in text


@pytest.mark.parametrize("bad,message", [
    (["--mode=greedy"], "--mode=greedy"), (["--cost=energy"], "--cost=energy"),
    (["--cost_weight=-1"], "COST_WEIGHT"), (["--latency_budget=fast"], "--latency_budget=fast"),
    (["--latency_budget=0"], "LATENCY_BUDGET must be > 0"), (["--cost_repeats=0"], "COST_REPEATS"),
    (["--cost_weight=0.1", "--granularity=weights"], "heads+neurons"),
    (["--mode=iterative"], "LATENCY_BUDGET or ACCURACY_FLOOR"),
    (["--mode=iterative", "--accuracy_floor=0.8", "--criterion=gradient"], "--criterion=magnitude"),
    (["--mode=iterative", "--accuracy_floor=0.8", "--step_rate=1.5"], "STEP_RATE"),
])
def test_bad_cost_settings_fail_before_any_run(tmp_path, tiny_bert_config, bad, message, capsys):
    import allocate
    data = write_slice(tmp_path / "sst2", 40, 20)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        allocate.main([*tiny_args(tiny_bert_config, data, out), "--held_out=10", "--cost_sentences=8",
                       "--granularity=heads+neurons", *bad])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
