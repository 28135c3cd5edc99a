"""allocate.py and pruning.studies.allocation: the exact budget, the pipeline's own masks, the gymnasium API,
learning on a hand-built case, resuming a killed search, and the held-out sentences."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env
from transformers import BertConfig, BertForSequenceClassification

from conftest import TINY, run_script, tiny_args, write_slice
from pruning.core.units import PrunableUnits
from pruning.data import loading as sst2
from pruning.run.checkpoint import read_run_masks
from pruning.run.pruning_config import PruningConfig
from pruning.studies import allocation

HEADS4 = {**TINY, "num_attention_heads": 4}  # 4 heads of 8: room to move heads between layers


def tiny_model(layers: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(vocab_size=100, **{**HEADS4, "num_hidden_layers": layers}))


BUDGETS = [("heads+neurons", {"head": 1 / 3, "neuron": 0.4}), ("heads+neurons", {"head": 0.5, "neuron": 0.85}),
           ("weights", {"weight": 0.5}), ("weights", {"weight": 0.8})]


@pytest.mark.parametrize("granularity,rates", BUDGETS)
def test_any_action_sequence_meets_the_budget_exactly(granularity, rates):
    budget = allocation.Budget.of(PrunableUnits(tiny_model(), granularity), rates, max_rate=0.9)
    env = allocation.AllocationEnv(budget, lambda counts: 0.0)
    rng = np.random.default_rng(0)
    for episode in range(300):
        env.reset()
        done = False
        while not done:
            a = rng.choice([-7.0, -1.0, 0.0, 1.0, 7.0, np.nan, np.inf, rng.uniform(-1, 1)]) if episode % 3 else \
                rng.uniform(-1, 1)
            _, _, done, _, info = env.step(np.array([a], dtype=np.float32))
        counts = info["counts"]
        for kind, n in budget.remove.items():
            steps = budget.kind_steps(kind)
            assert sum(counts[s.name] for s in steps) == n
            assert all(0 <= counts[s.name] <= s.most for s in steps)
    assert len(env.history) == 300


@pytest.mark.parametrize("granularity,rates", BUDGETS[::2])
def test_the_pipeline_removes_exactly_the_allocated_units(granularity, rates):
    """The rates handed to the pipeline make its own selection (PruningConfig.select) remove exactly
    the counts, and the very units the search's reward pruned."""
    model = tiny_model()
    units = PrunableUnits(model, granularity)
    budget = allocation.Budget.of(units, rates, max_rate=0.9)
    scores = {n: torch.rand(g.shape, generator=torch.Generator().manual_seed(i)) for i, (n, g) in
              enumerate(units.groups.items())}
    env = allocation.AllocationEnv(budget, lambda c: 0.0)
    rng = np.random.default_rng(1)
    for _ in range(5):
        env.reset()
        done = False
        while not done:
            _, _, done, _, info = env.step(np.array([rng.uniform(-1, 1)], dtype=np.float32))
        rates_by_kind = budget.rates(info["counts"])
        config = PruningConfig(granularity=granularity, scope="global",
                               **({"rate": rates_by_kind["weight"]} if granularity == "weights" else
                                  {"head_rate": rates_by_kind["head"], "neuron_rate": rates_by_kind["neuron"]}))
        pipeline = config.select(units, scores)
        searched = allocation.masks_for(info["counts"], scores, budget)
        assert all(torch.equal(pipeline[n], searched[n]) for n in units.groups)
        for step in budget.steps:
            assert sum(int((~pipeline[g]).sum()) for g in step.groups) == info["counts"][step.name]


def test_uniform_spreads_the_budget_evenly_and_exactly():
    budget = allocation.Budget.of(PrunableUnits(tiny_model(), "heads+neurons"), {"head": 1 / 3, "neuron": 0.4}, 0.9)
    uniform = budget.uniform()
    assert budget.remove == {"head": 3, "neuron": 77}  # round(4/3) per layer; round(0.4 x 192)
    assert [uniform[f"layer{i}.neurons"] for i in range(3)] == [26, 26, 25]
    assert [uniform[f"layer{i}.heads"] for i in range(3)] == [1, 1, 1]
    budget.check(uniform)


def test_a_budget_the_layers_cannot_hold_is_refused():
    with pytest.raises(ValueError, match="MAX_LAYER_RATE"):
        allocation.Budget.of(PrunableUnits(tiny_model(), "heads+neurons"), {"head": 0.5, "neuron": 0.8}, 0.5)


def test_the_environment_follows_the_gymnasium_api():
    budget = allocation.Budget.of(PrunableUnits(tiny_model(), "heads+neurons"), {"head": 1 / 3, "neuron": 0.4}, 0.9)
    check_env(allocation.AllocationEnv(budget, lambda counts: float(counts["layer0.neurons"])), skip_render_check=True)


def sentences(n: int = 96, length: int = 12, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, 100, (length,), generator=g).tolist(), "attention_mask": [1] * length,
             "labels": 0} for _ in range(n)]


def collate(rows):
    return {"input_ids": torch.tensor([r["input_ids"] for r in rows]),
            "attention_mask": torch.tensor([r["attention_mask"] for r in rows])}


@pytest.mark.slow  # trains for tens of seconds in this process
def test_the_agent_learns_to_prune_the_layer_that_costs_nothing(tmp_path):
    """A tiny model whose first layer adds nothing (its attention output and FFN output weights are
    zero) and whose labels are its own predictions: pruning layer 0 keeps the accuracy at 1, pruning
    layer 1 does not. The agent, with the real reward (pruned model on fixed sentences), must learn
    to spend the budget on layer 0."""
    model = tiny_model(layers=2, seed=3)
    with torch.no_grad():
        for name in ("attention.output.dense", "output.dense"):
            lin = model.bert.encoder.layer[0].get_submodule(name)
            lin.weight.zero_()
            lin.bias.zero_()
        for p in model.bert.encoder.layer[1].parameters():  # a layer 1 whose units matter
            p.mul_(4.0)
    rows = sentences()
    batches = allocation.batches_of(rows, collate, batch_size=32)
    with torch.inference_mode():
        for b in batches:
            b["labels"] = model.eval()(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits.argmax(-1)
    units = PrunableUnits(model, "heads+neurons")
    budget = allocation.Budget.of(units, {"head": 0.25, "neuron": 0.4}, max_rate=0.9)
    scores = {n: torch.rand(g.shape, generator=torch.Generator().manual_seed(7)) for n, g in units.groups.items()}
    reward = allocation.SliceReward(model, "heads+neurons", scores, budget, batches)
    assert reward(budget.uniform()) < 1.0  # the uniform split pays for pruning layer 1
    env = allocation.AllocationEnv(budget, reward)
    search = allocation.Search(env, tmp_path, allocation.AgentSettings(episodes=160, episodes_per_update=8, seed=0))
    history = search.run()
    first, last = history[:16], history[-16:]
    in_layer0 = lambda h: h["counts"]["layer0.neurons"] / budget.remove["neuron"]  # noqa: E731
    assert np.mean([in_layer0(h) for h in last]) > np.mean([in_layer0(h) for h in first]) + 0.2
    assert np.mean([h["reward"] for h in last]) > np.mean([h["reward"] for h in first])
    policy = search.policy_counts()
    assert policy["layer0.neurons"] > budget.uniform()["layer0.neurons"]


@pytest.mark.slow  # trains for tens of seconds in this process
def test_a_killed_search_resumes_and_ends_as_the_uninterrupted_one(tmp_path):
    budget = allocation.Budget.of(PrunableUnits(tiny_model(), "heads+neurons"), {"head": 1 / 3, "neuron": 0.4}, 0.9)
    settings = allocation.AgentSettings(episodes=40, episodes_per_update=4, seed=5)

    def reward(counts):
        return counts["layer1.neurons"] / 77 - 0.3 * counts["layer0.heads"]

    whole = allocation.Search(allocation.AllocationEnv(budget, reward), tmp_path / "whole", settings).run()

    class Killed(Exception):
        pass
    calls = []

    def dying(counts):
        calls.append(1)
        if len(calls) == 23:  # in the middle of the sixth update's rollout
            raise Killed
        return reward(counts)
    with pytest.raises(Killed):
        allocation.Search(allocation.AllocationEnv(budget, dying), tmp_path / "killed", settings).run()
    saved = json.loads((tmp_path / "killed" / "search.json").read_text())
    assert len(saved["history"]) == 20  # five updates of four episodes made it to disk
    resumed = allocation.Search(allocation.AllocationEnv(budget, reward), tmp_path / "killed", settings).run()
    assert [h["counts"] for h in resumed] == [h["counts"] for h in whole]
    assert [h["reward"] for h in resumed] == [h["reward"] for h in whole]
    other = allocation.AgentSettings(episodes=40, episodes_per_update=8, seed=5)
    with pytest.raises(ValueError, match="other settings"):
        allocation.Search(allocation.AllocationEnv(budget, reward), tmp_path / "killed", other).run()


def test_held_out_sentences_are_the_same_for_every_seed_and_never_trained_on():
    _, train, _ = sst2.load_train("sst2", "")
    train = train.add_column("row", list(range(len(train))))
    rest, held = sst2.hold_out(train, 500)
    assert len(held) == 500 and set(rest["row"]) | set(held["row"]) == set(range(len(train)))
    assert not set(rest["row"]) & set(held["row"])
    assert list(sst2.hold_out(train, 500)[1]["row"]) == list(held["row"])  # one fixed draw
    for seed in (1, 2):  # a run's subset is drawn from the rest only
        assert not set(sst2.subset(rest, 2000, seed)["row"]) & set(held["row"])
    assert sst2.hold_out(train, 0)[0] is train
    with pytest.raises(sst2.DataError, match="HELD_OUT"):
        sst2.hold_out(train, len(train))


# --- the script ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert_config):
    """allocate.py on a tiny model: one seed, 16 episodes, every allocation (3 runs); the reward charges the
    measured latency (COST_WEIGHT)."""
    root = tmp_path_factory.mktemp("allocate")
    data = write_slice(root / "sst2", 400, 100)
    config = root / "tiny.json"
    config.write_text(json.dumps({**json.loads(Path(tiny_bert_config).read_text()), **HEADS4}))
    out = root / "out"
    args = [a for a in tiny_args(config, data, out) if not a.startswith("--measure_speed")]
    args += ["--seeds=1", "--episodes=16", "--episodes_per_update=4", "--held_out=64", "--head_rate=0.25",
             "--cost_weight=0.05", "--cost_repeats=1"]
    proc = run_script("allocate.py", args, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, args, proc


def removed(run_dir: Path) -> dict[str, int]:
    masks = read_run_masks(str(run_dir))[0]
    return {n: int((~m).sum()) for n, m in masks.items()}


def test_the_study_runs_every_allocation_at_the_same_budget(study):
    out, _, proc = study
    result = json.loads((out / "allocation.json").read_text())
    assert result["episodes"] == 16 and len(result["history"]) == 16
    assert set(result["costs"]) == {"dense", "agent", "uniform", "global"} and result["costs"]["dense"]["ratio"] == 1.0
    for name, c in result["candidates"].items():  # the composite reward, from the cached measured costs
        assert c["cost_ratio"] == result["costs"][name]["ratio"]
        assert c["reward"] == pytest.approx(c["metric"] - 0.05 * c["cost_ratio"])
    assert result["reward"] == max(result["history"])
    for seed in (1,):
        agent, uniform, global_ = (removed(out / f"{name}-s{seed}") for name in ("agent", "uniform", "global"))
        for kind in ("heads", "neurons"):  # the same number of units in all three
            totals = [sum(v for n, v in r.items() if n.endswith(kind)) for r in (agent, uniform, global_)]
            assert len(set(totals)) == 1, (kind, totals)
        for step, count in result["counts"].items():  # the agent's per-layer counts, exactly
            layer, kind = step.split(".")
            assert agent[f"bert.encoder.layer.{layer.removeprefix('layer')}.{kind}"] == count
        for step, count in result["uniform_counts"].items():
            layer, kind = step.split(".")
            assert uniform[f"bert.encoder.layer.{layer.removeprefix('layer')}.{kind}"] == count
    held = [json.loads((out / name / "results.json").read_text())["train_rows"] for name in ("agent-s1", "global-s1")]
    assert held == [400 - 64] * 2
    text = (out / "allocate.md").read_text()
    assert "| agent |" in text and "| uniform |" in text and "| global |" in text and "| dense |" in text
    assert (out / "allocate_rates.png").exists() and (out / "allocate_reward.png").exists()


def test_a_rerun_skips_the_finished_study(study):
    out, args, _ = study
    stamps = {p: p.stat().st_mtime for p in out.glob("*/results.json")}
    proc = run_script("allocate.py", [*args, "--measure_speed=false"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert {p: p.stat().st_mtime for p in out.glob("*/results.json")} == stamps
    proc = run_script("allocate.py", [*args, "--measure_speed=false", "--cost_weight=0.1"], timeout=300)
    assert proc.returncode == 2 and "COST_WEIGHT: 0.05 there, 0.1 now" in proc.stderr  # not the search it asked for


def test_the_reward_never_reads_the_dev_set(study, monkeypatch):
    """The search rebuilt from the finished source run reads train.tsv only."""
    import allocate
    out, args, _ = study
    config, _, run_config = allocate.settings([a for a in args if not a.startswith("--out_dir")]
                                              + [f"--out_dir={out}"])
    read = []
    original = sst2.read_split
    monkeypatch.setattr(sst2, "read_split", lambda task, split, path: read.append(Path(path).name)
                        or original(task, split, path))
    model, tokenizer, budget = allocate.model_budget(config, run_config)
    reward, _ = allocate.reward_setup(config, run_config, out / "uniform-s1", model, tokenizer, budget)
    assert 0.0 <= reward(budget.uniform()) <= 1.0
    assert read == ["train.tsv"]


@pytest.mark.parametrize("bad,message", [
    (["--seed=3"], "--seeds"), (["--threshold=layerwise"], "--allocations"),
    (["--neuron_rate=0.4,0.4"], "one rate for the whole model"), (["--allocations=agent"], "with uniform"),
    (["--max_layer_rate=0.3"], "MAX_LAYER_RATE"), (["--reward=f1"], "choose metric (the task's headline, accuracy) or loss"),
])
def test_bad_settings_fail_before_any_run(tmp_path, tiny_bert_config, bad, message, capsys):
    import allocate
    data = write_slice(tmp_path / "sst2", 40, 20)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        allocate.main([*tiny_args(tiny_bert_config, data, out), *bad])
    assert stop.value.code == 2 and message in capsys.readouterr().err
    assert not out.exists()
