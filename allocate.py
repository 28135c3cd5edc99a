"""Per-layer pruning rates chosen by a reinforcement-learning agent, against uniform rates and one global threshold.

    python allocate.py --train_subset=16000          # MiniLM, heads+neurons (1/3 heads, 40% neurons), 3 seeds
    python allocate.py --granularity=weights --pruning_rate=0.7 --out_dir=sweeps/allocate-weights
    python allocate.py --train_subset=16000 --cost=throughput --latency_budget=uniform --out_dir=sweeps/allocate-fast
    python allocate.py --train_subset=16000 --mode=iterative --cost=throughput --latency_budget=0.5 --accuracy_floor=0.85

The budget is what the script's rates remove (HEAD_RATE and NEURON_RATE, or PRUNING_RATE): every
allocation removes exactly as many heads, neurons or weights. For the first seed:
1. the uniform allocation runs through the early-bird pipeline (SCRIPT with CRITERION), keeping
   HELD_OUT train sentences out of training and the weights at the early bird (SAVE_EB_WEIGHTS);
2. the search: a PPO agent (stable-baselines3) walks the layers and allocates the budget (AMC, He et
   al. 2018); each allocation's reward is the task's headline metric (REWARD "metric"; or minus the
   loss) on the HELD_OUT train examples of the run's task (pairs tokenized as pairs) of those early-bird
   weights pruned by the criterion's scores, untrained (seconds, not a training). The dev set is
   never read. The search is checkpointed after every update: a killed search resumes.
   Cost-aware (heads+neurons): the reward also charges the candidate's measured cost on this machine
   (COST: latency at batch 1, time per sentence at COST_BATCH_SIZE, or peak memory; `pruning.deploy.inference_cost`,
   each structure measured once), as metric - COST_WEIGHT x (cost / dense cost), and LATENCY_BUDGET
   excludes candidates over a share of the dense cost (AMC's resource-constrained mode).
   With MLP_RATE or LAYER_RATE above 0 (--layer_rate=0.17: one of six layers), the agent also chooses which
   layers lose their whole MLP or go entirely (episodes mode; the agent's runs get them as per-layer 0/1 rates).
   MODE="iterative" instead prunes STEP_RATE of what is left at each step, each step's split over the
   layers chosen by a short PPO search, with FINETUNE_STEPS of fine-tuning between steps, until
   LATENCY_BUDGET or ACCURACY_FLOOR (`pruning.studies.iterative`; a killed loop resumes after its last step).
Then for every seed, the best allocation found ("agent"), uniform rates and the global threshold run
through the whole pipeline (early-bird search with those rates, pruning, retraining), every run with
the same HELD_OUT sentences kept out. OUT_DIR/allocate.md holds the task's headline dev metric (mean ± std), paired
tests against the agent, the per-layer rates, the reward curve and, for heads+neurons, the inference
speed of each allocation measured side by side with the dense model.

Each training is one run of SCRIPT in its own process (`pruning.grid.cells`): finished runs are skipped and
killed ones resume. Any other --key=value goes to every run (see `python bert.py --help`).
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import copy
import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pruning.data.tasks import METRIC_TITLES
from pruning.grid import loop
from pruning.grid.cells import check_cell, run_cell
from pruning.run import checks, experiment, schema
from pruning.run.checkpoint import read_run_masks
from pruning.run.schema import RunResults
from pruning.run.trainer import SNAPSHOT_FILE
from pruning.settings import ConfigError, fail, grid_settings, trainer_names
from pruning.studies import allocation, stats, sweep_tables
from pruning.core.units import WHOLE_KINDS  # heads+neurons: allocated too when the runs' MLP_RATE / LAYER_RATE is above 0

SCRIPT = "bert.py"                   # the experiment every run uses
CRITERION = "magnitude"              # the criterion that scores units, in the search and in every run
GRANULARITY = "heads+neurons"        # or "weights" (rates per layer over each layer's weights; set --pruning_rate)
SEEDS = "42,43,44"                   # every allocation runs once per seed; the first seed's uniform run feeds the search
ALLOCATIONS = "agent,uniform,global" # the allocations compared
HELD_OUT = 1000                      # train sentences no run trains on: the reward's sentences
EPISODES = 400                       # allocations the agent tries
EPISODES_PER_UPDATE = 8              # PPO: episodes per rollout, then an update (and a checkpoint)
REWARD = "metric"                    # on the held-out examples: "metric" (the task's headline), or "loss" (minus the mean cross-entropy; a regression's MSE)
MAX_LAYER_RATE = 0.9                 # no layer loses more than this share of its heads, neurons or weights
AGENT_SEED = 0                       # seeds the agent's initialisation and exploration
MEASURE_SPEED = True                 # heads+neurons: time each allocation's first-seed model against the dense model
OUT_DIR = "sweeps/allocate"          # one sub-directory per run, search/, allocation.json, allocate.md and plots
MODE = "episodes"                    # "episodes": one allocation of the fixed budget per episode (AMC); "iterative": STEP_RATE of what is left per step, fine-tuned between steps, until LATENCY_BUDGET or ACCURACY_FLOOR
COST = "latency"                     # the measured cost the reward charges: "latency" (ms/sentence at batch 1), "throughput" (time/sentence at COST_BATCH_SIZE), "memory" (peak MB at COST_BATCH_SIZE)
COST_WEIGHT = 0.0                    # reward = metric - COST_WEIGHT x (COST of the candidate / COST of the dense model); 0: the metric alone
LATENCY_BUDGET = ""                  # hard limit on that ratio (COST / dense COST): "" none, a fraction (e.g. 0.6), or "uniform" (uniform's measured ratio); episodes: never chosen above it; iterative: where it stops
COST_BATCH_SIZE = 64                 # batch size of the throughput and peak-memory measurements
COST_SENTENCES = 128                 # held-out sentences the costs are measured on (all HELD_OUT if fewer; 16 of them also one at a time: the latency)
COST_REPEATS = 3                     # timing rounds per structure, each beside a round of the dense model (median ratio kept); each structure is measured once (OUT_DIR/costs.json)
STEP_RATE = 0.1                      # iterative: each step removes this share of the heads and of the FFN neurons left
FINETUNE_STEPS = 50                  # iterative: optimizer steps of fine-tuning after each step (the runs' BATCH_SIZE and LEARNING_RATE)
ACCURACY_FLOOR = 0.0                 # iterative: stop when the held-out metric falls under this (0: no floor); the step before is the result
STEP_EPISODES = 48                   # iterative: PPO episodes of each step's search
MAX_STEPS = 30                       # iterative: at most this many steps
SETTINGS = ("SCRIPT", "CRITERION", "GRANULARITY", "SEEDS", "ALLOCATIONS", "HELD_OUT", "EPISODES",
            "EPISODES_PER_UPDATE", "REWARD", "MAX_LAYER_RATE", "AGENT_SEED", "MEASURE_SPEED", "OUT_DIR", "MODE",
            "COST", "COST_WEIGHT", "LATENCY_BUDGET", "COST_BATCH_SIZE", "COST_SENTENCES", "COST_REPEATS", "STEP_RATE",
            "FINETUNE_STEPS", "ACCURACY_FLOOR", "STEP_EPISODES", "MAX_STEPS")
MODES = ("episodes", "iterative")
# What the search's result depends on: a finished search (allocation.json) made with other values is refused.
SEARCH_SETTINGS = ("CRITERION", "HELD_OUT", "EPISODES", "EPISODES_PER_UPDATE", "REWARD", "MAX_LAYER_RATE", "AGENT_SEED",
                   "MODE", "COST", "COST_WEIGHT", "LATENCY_BUDGET", "COST_BATCH_SIZE", "COST_SENTENCES",
                   "COST_REPEATS", "STEP_RATE", "FINETUNE_STEPS", "ACCURACY_FLOOR", "STEP_EPISODES", "MAX_STEPS")
KINDS_OF = {"heads+neurons": ("head", "neuron"), "weights": ("weight",)}
RATE_KEY = {"head": "HEAD_RATE", "neuron": "NEURON_RATE", "weight": "PRUNING_RATE", "mlp": "MLP_RATE",
            "layer": "LAYER_RATE"}
# What the study sets for every run itself.
STUDY_OWNS = {"--seed": "--seeds", "--trainer": "--criterion", "--threshold": "--allocations", "--mask_from": None,
              "--save_eb_weights": None, "--run_name": None, "--resume": None}


def settings(argv: list[str] | None = None) -> tuple[dict, list[str], dict]:
    """The study's settings, the arguments for every run and the runs' configuration, checked before any work."""
    config, passed_on, script = grid_settings(globals(), SETTINGS, argv, owned=STUDY_OWNS)
    run_config = experiment.configure(script, passed_on)
    if config["CRITERION"] not in trainer_names(script) or config["CRITERION"] == "dense":
        raise ConfigError(f"unknown pruning criterion {config['CRITERION']!r}; choose from "
                          f"{', '.join(n for n in trainer_names(script) if n != 'dense')}")
    loop.check_granularity(config["GRANULARITY"])
    config["ALLOCATIONS"] = [a.strip() for a in config["ALLOCATIONS"].split(",") if a.strip()]
    wrong = [a for a in config["ALLOCATIONS"] if a not in ("agent", "uniform", "global")]
    if wrong or "uniform" not in config["ALLOCATIONS"]:
        raise ConfigError(f"--allocations={','.join(config['ALLOCATIONS'])}: give some of agent, uniform, "
                                     "global, comma-separated, with uniform (its first-seed run feeds the search)")
    config["SEEDS"] = loop.seeds(config["SEEDS"])
    for key in ("HELD_OUT", "EPISODES", "EPISODES_PER_UPDATE"):
        if config[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {config[key]}")
    headline = run_task(run_config).headline
    if config["REWARD"] == headline:  # the metric by its name
        config["REWARD"] = "metric"
    if config["REWARD"] not in allocation.SliceReward.METRICS:
        raise ConfigError(f"--reward={config['REWARD']}: choose metric (the task's headline, {headline}) "
                                     "or loss")
    if not 0 < config["MAX_LAYER_RATE"] < 1:
        raise ConfigError(f"MAX_LAYER_RATE must lie in (0, 1), got {config['MAX_LAYER_RATE']}")
    check_cost_settings(config)
    for kind in (*KINDS_OF[config["GRANULARITY"]], *WHOLE_KINDS):
        rate = run_config.get(RATE_KEY[kind], 0.0)
        if isinstance(rate, tuple):
            raise ConfigError(f"--{RATE_KEY[kind].lower()} sets the budget: give one rate for the whole "
                                         "model, not one per layer (the agent chooses those)")
    if config["MODE"] == "iterative" and set(unit_kinds(config, run_config)) & set(WHOLE_KINDS):
        raise ConfigError("MODE=iterative prunes heads and neurons step by step; whole MLPs and layers "
                                     "are allocated in MODE=episodes: set --mode=episodes, or --mlp_rate=0 "
                                     "--layer_rate=0")
    for _, args in runs(config, passed_on):  # each kind of run's whole configuration
        checks.validate(experiment.configure(script, args))
    return config, passed_on, run_config


def check_cost_settings(config: dict) -> None:
    """The cost-aware and iterative settings (MODE, COST, COST_WEIGHT, LATENCY_BUDGET, the cost measurement,
    STEP_RATE, FINETUNE_STEPS, ACCURACY_FLOOR, STEP_EPISODES, MAX_STEPS); LATENCY_BUDGET becomes None, a
    float or "uniform". Raises ConfigError naming the setting."""
    from pruning.deploy.inference_cost import COSTS
    fail = ConfigError
    if config["MODE"] not in MODES:
        raise fail(f"--mode={config['MODE']}: choose one of {', '.join(MODES)}")
    if config["COST"] not in COSTS:
        raise fail(f"--cost={config['COST']}: choose one of {', '.join(COSTS)}")
    if config["COST_WEIGHT"] < 0:
        raise fail(f"COST_WEIGHT must be >= 0 (metric points per dense cost), got {config['COST_WEIGHT']}")
    text = str(config["LATENCY_BUDGET"]).strip()
    if text in ("", "none"):
        config["LATENCY_BUDGET"] = None
    elif text != "uniform":
        try:
            config["LATENCY_BUDGET"] = float(text)
        except ValueError:
            raise fail(f"--latency_budget={text}: give a fraction of the dense model's cost (e.g. 0.6), "
                       "'uniform' or nothing") from None
        if not config["LATENCY_BUDGET"] > 0:
            raise fail(f"LATENCY_BUDGET must be > 0 (a fraction of the dense model's cost), got {text}")
    for key in ("COST_BATCH_SIZE", "COST_SENTENCES", "COST_REPEATS", "FINETUNE_STEPS", "STEP_EPISODES", "MAX_STEPS"):
        if config[key] < 1:
            raise fail(f"{key} must be >= 1, got {config[key]}")
    costed = config["COST_WEIGHT"] > 0 or config["LATENCY_BUDGET"] is not None or config["MODE"] == "iterative"
    if costed and config["GRANULARITY"] != "heads+neurons":
        raise fail("a cost-aware reward, LATENCY_BUDGET and MODE=iterative need --granularity=heads+neurons: zeroed "
                   "weights leave every candidate as slow as the dense model")
    if config["MODE"] == "iterative":
        if not 0 < config["STEP_RATE"] < 1:
            raise fail(f"STEP_RATE must lie in (0, 1), got {config['STEP_RATE']}")
        if config["CRITERION"] != "magnitude":
            raise fail(f"MODE=iterative ranks units by magnitude, rescored after each fine-tuning; --criterion="
                       f"{config['CRITERION']} cannot be rescored between steps: use --criterion=magnitude")
        if config["LATENCY_BUDGET"] is None and not config["ACCURACY_FLOOR"]:
            raise fail("MODE=iterative stops at LATENCY_BUDGET or ACCURACY_FLOOR: set at least one")


def unit_kinds(config: dict, run_config: dict) -> tuple[str, ...]:
    """The unit kinds the agent allocates: heads and neurons (and whole MLPs and layers where the runs' MLP_RATE /
    LAYER_RATE is above 0), or weights."""
    if config["GRANULARITY"] != "heads+neurons":
        return KINDS_OF[config["GRANULARITY"]]
    return (*KINDS_OF["heads+neurons"], *(k for k in WHOLE_KINDS if run_config.get(RATE_KEY[k])))


def budget_rates(config: dict, run_config: dict) -> dict[str, float]:
    """The uniform rates (fractions) the budget is made from, by unit kind, as the source run recorded them
    (HEAD_RATE / NEURON_RATE and any MLP_RATE / LAYER_RATE, or PRUNING_RATE)."""
    return {kind: run_config[RATE_KEY[kind]] for kind in unit_kinds(config, run_config)}


def rate_args(config: dict, run_config: dict, allocation_name: str, counts: dict | None, budget) -> list[str]:
    """The rate settings of one allocation: per-layer rates (agent; uniform, whose whole MLPs and layers the
    pipeline picks by score at the one rate) or one global threshold."""
    if allocation_name == "global":
        return [f"--{RATE_KEY[k].lower()}={r!r}" for k, r in budget_rates(config, run_config).items()]
    if budget is None:  # validation, before the model (and so its per-layer rates) is known
        return []
    rates = budget.rates(counts if allocation_name == "agent" else budget.uniform())
    args = [f"--{RATE_KEY[k].lower()}={','.join(repr(r) for r in rs)}" for k, rs in rates.items()]
    return args + [f"--{RATE_KEY[k].lower()}={budget_rates(config, run_config)[k]!r}"
                   for k in budget.remove if k not in rates]


def runs(config: dict, passed_on: list[str], counts: dict | None = None, budget=None, run_config=None):
    """(name, arguments) of every comparison run, seed by seed, the first seed's uniform run (the
    search's source) first. Without a budget (validation) the per-layer rates are left out; without
    counts (before the search) the agent's runs are."""
    for seed in config["SEEDS"]:
        for name in sorted(config["ALLOCATIONS"], key=lambda n: n != "uniform"):
            if name == "agent" and counts is None and budget is not None:
                continue
            extra = ["--save_eb_weights=true"] if name == "uniform" and seed == config["SEEDS"][0] else []
            yield f"{name}-s{seed}", ["--measure_speed=false", *passed_on, f"--trainer={config['CRITERION']}",
                                      f"--seed={seed}", f"--granularity={config['GRANULARITY']}",
                                      f"--held_out={config['HELD_OUT']}", "--threshold=global",
                                      *(rate_args(config, run_config, name, counts, budget) if budget else []),
                                      *extra]


# --- the search ------------------------------------------------------------------------------------
def run_task(run_config: dict):
    """The runs' task (`pruning.data.tasks.Task`) from their TASK setting; the custom task's from its train
    split (`pruning.data.loading.load_train`). Raises ConfigError for data that cannot be read."""
    from pruning.data import loading, tasks
    settings = loading.run_task(run_config)
    try:
        if tasks.known(settings["task"]) and settings["task"].lower() != tasks.CUSTOM:
            return tasks.get(settings["task"])
        return loading.load_train(**settings)[0]
    except loading.DataError as e:
        raise ConfigError(str(e)) from None


def model_budget(config: dict, run_config: dict):
    """(model, tokenizer, budget): what the script's rates remove from this model (its head sized for
    the runs' task)."""
    from pruning.core.units import PrunableUnits
    from pruning.data import models
    model, tokenizer, _ = models.load_model_and_tokenizer(run_config["MODEL"], run_config["TOKENIZER"],
                                                          num_labels=run_task(run_config).num_labels)
    whole = tuple(k for k in unit_kinds(config, run_config) if k in WHOLE_KINDS)
    try:
        budget = allocation.Budget.of(PrunableUnits(model, config["GRANULARITY"], whole),
                                      budget_rates(config, run_config), config["MAX_LAYER_RATE"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return model, tokenizer, budget


def task_batches(rows, task, tokenizer, run_config: dict, batch_size: int = 128) -> list[dict]:
    """`rows` of the runs' task tokenized as the runs tokenize them (pairs as pairs, MAX_LENGTH,
    TRUNCATION) in fixed length-sorted batches (`allocation.batches_of`)."""
    from transformers import DataCollatorWithPadding

    from datasets import DatasetDict
    from pruning.data import loading
    encoded = loading.tokenize(DatasetDict(rows=rows), tokenizer, run_config["MAX_LENGTH"], task,
                            run_config.get("TRUNCATION") or "head")["rows"]
    return allocation.batches_of(loading.model_rows(encoded), DataCollatorWithPadding(tokenizer), batch_size)


def reward_setup(config: dict, run_config: dict, source: Path, model, tokenizer, budget):
    """The reward on the held-out train examples of the runs' task (`allocation.SliceReward`: its headline
    metric, or loss) and the criterion's scores, from the source run. Only the train file is read."""
    from safetensors.torch import load_file

    from pruning.data import loading

    _, scores, _ = read_run_masks(str(source))
    if scores is None:
        fail(f"{source} kept no scores of its units (a run from before they were saved); delete it")
    model.load_state_dict(load_file(str(source / SNAPSHOT_FILE)))
    task, train, _ = loading.load_train(**loading.run_task(run_config))  # the train file only: the dev set is never read
    _, held = loading.hold_out(train, config["HELD_OUT"])
    reward = allocation.SliceReward(model, config["GRANULARITY"], scores, budget,
                                    task_batches(held, task, tokenizer, run_config), config["REWARD"], task)
    return reward, scores


def cost_setup(config: dict, run_config: dict, out: Path, tokenizer, dense):
    """The measured cost of candidates (`pruning.deploy.inference_cost`): the first COST_SENTENCES held-out train
    examples (all of them when HELD_OUT is smaller) at COST_BATCH_SIZE (16 of them, spread over the lengths,
    also one at a time),
    COST_REPEATS rounds, each followed by the same round of `dense` (a copy of the dense model: the ratios are
    per-round), cached by structure in OUT_DIR/costs.json. Only the train file is read."""
    from pruning.data import loading
    from pruning.deploy.inference_cost import CostCache, CostMeter
    task, train, _ = loading.load_train(**loading.run_task(run_config))
    _, held = loading.hold_out(train, config["HELD_OUT"])
    rows = held.select(range(min(config["COST_SENTENCES"], len(held))))
    meter = CostMeter(task_batches(rows, task, tokenizer, run_config, batch_size=config["COST_BATCH_SIZE"]),
                      single=16, repeats=config["COST_REPEATS"], reference=copy.deepcopy(dense).eval())
    try:
        return CostCache(meter, out / "costs.json", meta=meter.meta())
    except ValueError as e:
        fail(e)


def search(config: dict, run_config: dict, out: Path, model, tokenizer, budget) -> dict:
    """Run (or resume, or read) the search, episodes or iterative (MODE); write allocation.json."""
    from pruning.deploy.inference_cost import cost_ratio
    path = out / "allocation.json"
    wanted = {k: config[k] for k in SEARCH_SETTINGS}
    if path.exists():
        result = json.loads(path.read_text())
        differ = {k: (v, wanted[k]) for k, v in result.get("search_settings", wanted).items() if wanted.get(k) != v}
        if differ:
            fail(f"{path} holds a search made with other settings (" + ", ".join(
                f"{k}: {a!r} there, {b!r} now" for k, (a, b) in differ.items()) + "): use another OUT_DIR, or delete "
                f"{path.name}, search/, iterative/ and the agent's runs to search again")
        return result
    source = out / f"uniform-s{config['SEEDS'][0]}"
    reward, scores = reward_setup(config, run_config, source, model, tokenizer, budget)
    structured = config["GRANULARITY"] == "heads+neurons"
    costs = cost_setup(config, run_config, out, tokenizer, model) if structured else None
    dense_cost = costs(model) if costs else None
    global_counts = _counts_of_rates(budget, allocation.global_rates(scores, budget))
    limit = config["LATENCY_BUDGET"]
    if limit == "uniform":
        limit = cost_ratio(costs(reward.pruned(budget.uniform(scores))), dense_cost, config["COST"])
    costed = config["COST_WEIGHT"] > 0 or limit is not None
    composite = allocation.CompositeReward(reward.pruned, reward.evaluate, costs, dense_cost, config["COST"],
                                           config["COST_WEIGHT"], limit if config["MODE"] == "episodes" else None) \
        if structured else None
    result = {"mode": config["MODE"], "budget": budget.remove, "total": budget.total,
              "steps": [s.name for s in budget.steps], "reward_metric": reward.name, "held_out": config["HELD_OUT"],
              "source": str(source), "cost": config["COST"], "cost_weight": config["COST_WEIGHT"],
              "latency_budget": limit, "latency_budget_setting": config["LATENCY_BUDGET"]}
    if config["MODE"] == "iterative":
        state, counts = iterative_search(config, run_config, out, model, tokenizer, reward, costs, dense_cost, limit,
                                         budget)
        result.update(counts=counts, rates=budget.rates(counts), iterative=state["steps"], stopped=state["stopped"],
                      result_step=state["result_step"], search_seconds=state.get("seconds", 0.0), history=[],
                      episodes=sum(len(json.loads(p.read_text())["history"])
                                   for p in sorted((out / "search").glob("step-*/search.json"))))
    else:
        env = allocation.AllocationEnv(budget, composite if costed else reward,
                                       allocation.global_rates(scores, budget))
        settings_ = allocation.AgentSettings(episodes=config["EPISODES"], seed=config["AGENT_SEED"],
                                             episodes_per_update=config["EPISODES_PER_UPDATE"])
        agent = allocation.Search(env, out / "search", settings_)
        with tqdm(total=config["EPISODES"], desc="search", unit="episode") as bar:
            def progress(done):
                bar.n = done
                within = [h["reward"] for h in env.history if h.get("within_budget", True)]
                bar.set_postfix_str(f"best {max(within):.4f}" if within else "none within the budget yet")
                bar.refresh()
            try:
                history = agent.run(progress)
                best = allocation.best(history)
            except ValueError as e:
                fail(e)
        policy = agent.policy_counts()
        score = (lambda c: composite(c)["reward"]) if costed else reward
        result.update(counts=best["counts"], rates=budget.rates(best["counts"]), reward=best["reward"],
                      episodes=len(history), search_seconds=agent.seconds,
                      policy={"counts": policy, "reward": score(policy)}, history=[h["reward"] for h in history],
                      within_budget=[h.get("within_budget", True) for h in history])
    allocations = {"agent": result["counts"], "uniform": budget.uniform(scores), "global": global_counts}
    if costed or config["MODE"] == "iterative":
        parts = {name: composite(c) for name, c in allocations.items()}
        result["references"] = {n: p["reward"] for n, p in parts.items() if n != "agent"}
        result["candidates"] = {n: {k: p[k] for k in ("reward", "metric", "cost_ratio", "within_budget")}
                                for n, p in parts.items()}
        result.setdefault("reward", parts["agent"]["reward"])
    else:
        result["references"] = {n: reward(c) for n, c in allocations.items() if n != "agent"}
    if costs:  # every allocation's structure, measured (or read from the cache), beside the dense model's
        result["costs"] = {"dense": {**dense_cost, "ratio": 1.0}}
        for name, c in allocations.items():
            figures = costs(reward.pruned(c))
            result["costs"][name] = {**figures, "ratio": cost_ratio(figures, dense_cost, config["COST"])}
    result["uniform_counts"], result["global_counts"] = budget.uniform(scores), global_counts
    result["search_settings"] = wanted
    schema.write_json(path, result)
    return result


def iterative_search(config: dict, run_config: dict, out: Path, model, tokenizer, reward, costs, dense_cost,
                     limit, budget) -> tuple[dict, dict]:
    """MODE="iterative" (`pruning.studies.iterative`) from the source run's early-bird weights (in `model`): each step
    a PPO search of STEP_EPISODES episodes (OUT_DIR/search/step-K/, seeded AGENT_SEED + K) with the composite
    reward on the current weights, then FINETUNE_STEPS optimizer steps on the runs' training rows (the first
    seed's TRAIN_SUBSET draw of the train file less the held-out examples), until the cost ratio is within
    `limit` or the held-out metric under ACCURACY_FLOOR. Returns (the pruner's state, the result's units removed
    per budget step of the dense model). The pruner's state is OUT_DIR/iterative/: a killed search resumes."""
    from transformers import DataCollatorWithPadding

    from datasets import DatasetDict
    from pruning.data import loading
    from pruning.deploy.inference_cost import cost_ratio
    from pruning.studies import iterative
    task, train, _ = loading.load_train(**loading.run_task(run_config))
    rest, _ = loading.hold_out(train, config["HELD_OUT"])
    rows = loading.subset(rest, run_config["TRAIN_SUBSET"], config["SEEDS"][0])
    encoded = loading.tokenize(DatasetDict(train=rows), tokenizer, run_config["MAX_LENGTH"], task,
                            run_config.get("TRUNCATION") or "head")["train"]
    collator = DataCollatorWithPadding(tokenizer)

    def allocate_step(k, current, step_budget, scores):
        slice_ = allocation.SliceReward(current, "heads+neurons", scores, step_budget, reward.batches,
                                        config["REWARD"], reward.task)
        env = allocation.AllocationEnv(step_budget, allocation.CompositeReward(
            slice_.pruned, slice_.evaluate, costs, dense_cost, config["COST"], config["COST_WEIGHT"]))
        settings_ = allocation.AgentSettings(episodes=config["STEP_EPISODES"], seed=config["AGENT_SEED"] + k,
                                             episodes_per_update=min(config["EPISODES_PER_UPDATE"],
                                                                     config["STEP_EPISODES"]))
        with tqdm(total=config["STEP_EPISODES"], desc=f"step {k}: search", unit="episode") as bar:
            history = allocation.Search(env, out / "search" / f"step-{k}", settings_).run(
                lambda done: bar.update(done - bar.n))
        return allocation.best(history)["counts"]

    def finetune_step(k, current):
        iterative.finetune(current, encoded, collator, config["FINETUNE_STEPS"], run_config["LEARNING_RATE"],
                           run_config["BATCH_SIZE"], config["SEEDS"][0] + k, out / "search" / "finetune",
                           run_config["WEIGHT_DECAY"])

    def cost_of(current):
        figures = costs(current)
        return cost_ratio(figures, dense_cost, config["COST"]), figures

    settings_ = iterative.IterativeSettings(step_rate=config["STEP_RATE"], finetune_steps=config["FINETUNE_STEPS"],
                                            accuracy_floor=config["ACCURACY_FLOOR"] or None, cost_budget=limit,
                                            max_rate=config["MAX_LAYER_RATE"], max_steps=config["MAX_STEPS"])
    pruner = iterative.IterativePruning(copy.deepcopy(model), out / "iterative", settings_, allocate_step, finetune_step,
                                      reward.evaluate, cost_of, context={k: config[k] for k in SEARCH_SETTINGS})
    try:
        state = pruner.run()
    except ValueError as e:
        fail(e)
    for r in state["steps"]:
        print(f"step {r['step']}: {r['left']} left, held-out {reward.name} {r['metric']:.4f}, "
              f"{config['COST']} {r['cost_ratio']:.3f} of dense")
    print(f"stopped: {state['stopped']}; the result is step {state['result_step']}")
    return state, pruner.removed_per_step(state, budget.steps)


def _counts_of_rates(budget, rates: dict[str, float]) -> dict[str, int]:
    return {s.name: round(rates[s.name] * s.size) for s in budget.steps}


# --- the report ------------------------------------------------------------------------------------
def collect(out: Path, config: dict) -> dict:
    """Finished comparison runs: found[allocation][seed]."""
    found: dict = {}
    for r in sweep_tables.load(out):
        name = Path(r.run_dir).name
        alloc, _, seed = name.rpartition("-s")
        if alloc in ("agent", "uniform", "global") and seed.isdigit():
            found.setdefault(alloc, {})[int(seed)] = r
    return found


def removed_per_layer(run: RunResults) -> dict[str, list[int]]:
    """Units each layer lost, by kind, from a run's final masks (whole MLPs and layers: 1 where removed)."""
    from pruning.core.units import layer_of
    masks = read_run_masks(run.run_dir)[0]
    out: dict = {}
    for name, m in sorted(masks.items(), key=lambda kv: kv[0]):
        whole = next((f"{k}s" for k in WHOLE_KINDS if name.endswith(f".{k}s")), None)
        if whole:  # one group over the layers, one unit per layer
            out[whole] = dict(enumerate((~m).int().tolist()))
            continue
        kind = "heads" if name.endswith(".heads") else "neurons" if name.endswith(".neurons") else "weights"
        layer = layer_of(name + ".") if kind != "weights" else layer_of(name)
        per = out.setdefault(kind, {})
        per[layer] = per.get(layer, 0) + int((~m).sum())
    return {k: [v[i] for i in sorted(v)] for k, v in out.items()}


def speeds(found: dict, run_config: dict) -> dict | None:
    """Dev examples/s at batch 64 of each allocation's first-seed model and the dense model, on the task's
    first dev set tokenized as the runs tokenize it, interleaved over rounds (medians of the per-round
    ratios to dense); None when no run finished."""
    from transformers import AutoModelForSequenceClassification

    from pruning.data import loading, models
    firsts = {name: by_seed[min(by_seed)] for name, by_seed in found.items() if by_seed}
    if not firsts:
        return None
    task, datasets, _ = loading.load(**loading.run_task(run_config))
    dense, tokenizer, _ = models.load_model_and_tokenizer(run_config["MODEL"], run_config["TOKENIZER"],
                                                          num_labels=task.num_labels)
    nets = {"dense": dense.eval()}
    for name, r in firsts.items():
        nets[name] = AutoModelForSequenceClassification.from_pretrained(str(Path(r.run_dir) / "model"),
                                                                         trust_remote_code=True).eval()
    batches = task_batches(datasets[task.dev], task, tokenizer, run_config, batch_size=64)  # timing only: no score
    return allocation.inference_speeds(nets, batches, rounds=3)


def write(out: Path, config: dict, search_result: dict | None, speed: dict | None = None) -> str:
    """Write OUT_DIR/allocate.md (the search's rewards, the task's headline dev metric per allocation paired
    by seed against the agent, parameters kept, speed, units removed per layer) and its two plots; return
    the Markdown text."""
    found = collect(out, config)
    acc = {name: {s: r.score("final") for s, r in by_seed.items()} for name, by_seed in found.items()}
    some = next((r for by_seed in found.values() for r in by_seed.values()), None)
    task = some.task if some else schema.TaskInfo()
    metric = METRIC_TITLES.get(task.headline, task.headline)
    lines = [f"# Per-layer rates: an RL agent against uniform rates and the global threshold "
             f"({config['CRITERION']}, {config['GRANULARITY']})", ""]
    if search_result:
        lines += search_lines(search_result, task)
    lines += [f"{task.title} dev {metric} (`{task.headline}`) after the whole pipeline (early-bird search with the "
              "allocation's rates, pruning, retraining), mean ± std over seeds (n); paired by seed against the agent: "
              "the difference, the t-test over seeds, McNemar's exact test on each seed's dev predictions (a "
              f"classification only) and a bootstrap of {metric} over the dev examples.", "",
              f"| allocation | dev {metric} | − agent | p (paired t) | McNemar p, each seed | bootstrap p | "
              "parameters kept (without embeddings) | sentences/s vs dense (batch 64) |",
              "|---|---|---|---|---|---|---|---|"]
    for name in config["ALLOCATIONS"]:
        by_seed = found.get(name, {})
        if not by_seed:
            continue
        values = list(acc[name].values())
        kept = [r.parameters.kept_without_embeddings() for r in by_seed.values()]
        diff = t_p = mc = boot = "–"
        seeds = sorted(set(by_seed) & set(found.get("agent", {})))
        if name != "agent" and len(seeds) >= 2:
            cells = stats.paired_cells([acc[name][x] for x in seeds], [acc["agent"][x] for x in seeds],
                                       [stats.dev_outputs(by_seed[x]) for x in seeds],
                                       [stats.dev_outputs(found["agent"][x]) for x in seeds], metric=task.headline)
            diff, t_p, mc, boot = cells["difference"], cells["t"], cells["mcnemar"], cells["bootstrap"]
        ratio = f"{speed[name]['ratio']:.2f}×" if speed and name in speed else "–"
        lines.append(f"| {name} | {stats.mean_std(values)} ({len(values)}) | {diff} | {t_p} | {mc} | {boot} | "
                     f"{stats.mean_std(kept)} | {ratio} |")
    if speed:
        threads = f"{speed['threads']} thread" + ("s" if speed["threads"] != 1 else "")
        lines += ["", f"Speed: {speed['dense']['per_second']:.0f} dev sentences/s for the dense model "
                      f"({speed['rounds']} interleaved rounds, {threads})."]
    lines += ["", "Units removed per layer (agent and uniform: the same in every seed; global: each seed's own "
              "threshold, the first seed shown):", ""]
    for name in config["ALLOCATIONS"]:
        by_seed = found.get(name, {})
        if by_seed:
            per = removed_per_layer(by_seed[min(by_seed)])
            lines.append(f"- {name}: " + "; ".join(f"{k} {v}" for k, v in per.items()))
    lines += ["", "![rates](allocate_rates.png)", ""]
    if search_result and search_result["history"]:
        lines += ["![reward](allocate_reward.png)", ""]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "allocate.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "allocate.md")
    if found:
        plot_rates(found, config, out / "allocate_rates.png")
    if search_result and search_result["history"]:
        plot_reward(search_result, config, out / "allocate_reward.png")
    return text


def search_lines(s: dict, task) -> list[str]:
    """allocate.md's account of the search (allocation.json `s`): the budget, the mode, the reward, each
    allocation's reward and, where measured, its cost beside the dense model's."""
    title = reward_title(s["reward_metric"])
    budget = ", ".join(f"{n:,} of {s['total'][k]:,} {k}s" for k, n in s["budget"].items())
    costed = bool(s.get("cost_weight")) or s.get("latency_budget") is not None
    what = title + (f" − {s['cost_weight']:g} × ({s['cost']} / dense {s['cost']})" if s.get("cost_weight") else "")
    limit = (f"; candidates whose {s['cost']} exceeds {s['latency_budget']:.3f} of dense's "
             f"(LATENCY_BUDGET={s['latency_budget_setting']}) are never chosen" if s.get("latency_budget") is not None
             and s.get("mode", "episodes") == "episodes" else "")
    source = f"{s['held_out']} held-out {task.title} train examples of the first seed's early-bird weights"
    if s.get("mode", "episodes") == "iterative":
        removed = {k: s["total"][k] - s["iterative"][s["result_step"]]["left"][k] for k in s["total"]}
        lines = [f"Iterative search: from {source}, each step removed STEP_RATE of the heads and FFN neurons left "
                 f"(allocated by a PPO search of its own: {s['episodes']} episodes in all), then fine-tuned; "
                 f"{s['search_seconds'] / 60:.1f} min. Reward = {what} on the held-out examples. Stopped: "
                 f"{s['stopped']}; the agent's allocation is step {s['result_step']}'s, removing "
                 + ", ".join(f"{n:,} of {s['total'][k]:,} {k}s" for k, n in removed.items())
                 + f" (uniform and global remove {budget}).", "",
                 f"| step | units left | held-out {s['reward_metric']} (fine-tuned) | {s['cost']} / dense |",
                 "|---|---|---|---|"]
        lines += [f"| {r['step']} | {', '.join(f'{n:,} {k}s' for k, n in r['left'].items())} | {r['metric']:.4f} | "
                  f"{r['cost_ratio']:.3f} |" for r in s["iterative"]]
        lines.append("")
    else:
        lines = [f"Budget: every allocation removes exactly {budget}. Search: {s['episodes']} episodes of PPO in "
                 f"{s['search_seconds'] / 60:.1f} min; reward = {what} on {source}, pruned and not trained{limit}.",
                 ""]
    lines += ["| allocation | reward (untrained) |" + (" held-out metric | cost / dense | within budget |"
                                                          if "candidates" in s else ""),
              "|---|---|" + ("---|---|---|" if "candidates" in s else "")]
    rows = [("agent" + (" (best episode)" if s.get("mode", "episodes") == "episodes" else ""), "agent", s["reward"]),
            *((n, n, v) for n, v in s["references"].items())]
    if "policy" in s:
        rows.insert(1, ("agent (the final policy, no exploration)", None, s["policy"]["reward"]))
    for label, key, value in rows:
        c = s.get("candidates", {}).get(key)
        extra = (f" {c['metric']:.4f} | {c['cost_ratio']:.3f} | {'yes' if c['within_budget'] else 'no'} |" if c else
                 (" – | – | – |" if "candidates" in s else ""))
        lines.append(f"| {label} | {value:.4f} |{extra}")
    lines.append("")
    if s.get("costs"):
        lines += ["Measured cost of each allocation's structure on this machine ("
                  f"{'the reward' if costed else 'not in the reward'}; medians of the timing rounds, the ratios "
                  "per round beside the dense model; OUT_DIR/costs.json):", "",
                  "| model | ms/sentence, batch 1 | sentences/s, cost batch | peak MB | "
                  f"{s['cost']} / dense |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {c['latency_ms']:.2f} | {c['sentences_per_second']:.0f} | {c['peak_memory_mb']:.1f} | "
                  f"{c['ratio']:.3f} |" for n, c in s["costs"].items()]
        lines.append("")
    return lines


def reward_title(name: str) -> str:
    """A reward's name for reports: a metric's title ("F1"), or "minus the loss" ("loss", "MSE loss")."""
    return f"minus the {name}" if name.endswith("loss") else METRIC_TITLES.get(name, name)


def plot_rates(found: dict, config: dict, path: Path) -> None:
    """Units removed per layer by each allocation (mean over seeds), one panel per unit kind, to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    per = {name: [removed_per_layer(r) for r in by_seed.values()] for name, by_seed in found.items() if by_seed}
    kinds = list(next(iter(per.values()))[0])
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.5), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for name, runs_ in per.items():
            counts = np.mean([r[kind] for r in runs_], axis=0)
            ax.plot(range(len(counts)), counts, marker="o", label=name)
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{kind} removed (mean over seeds)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Per-layer allocation of the same budget ({config['CRITERION']})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reward(result: dict, config: dict, path: Path) -> None:
    """Each episode's reward on the held-out sentences, its rolling mean over one PPO update and the best
    so far, beside the reference allocations' rewards, to `path`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rewards = np.asarray(result["history"])
    k = config["EPISODES_PER_UPDATE"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.scatter(range(len(rewards)), rewards, s=4, alpha=0.35, label="episode")
    if len(rewards) >= k:
        ax.plot(range(k - 1, len(rewards)), np.convolve(rewards, np.ones(k) / k, mode="valid"),
                label=f"mean of {k} (one update)")
    ax.plot(np.maximum.accumulate(rewards), label="best so far")
    for (name, value), style in zip(result["references"].items(), (":", "--")):
        ax.axhline(value, color="k", ls=style, lw=1, label=name)
    ax.set_xlabel("episode")
    ax.set_ylabel(f"held-out {reward_title(result['reward_metric'])}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Entry point: the first seed's uniform run (the search's source), the agent's search (He et al.
    2018 AMC, `pruning.studies.allocation`), then every allocation's pipeline runs and allocate.md. Bad settings
    exit with status 2 (`fail`); failed runs end in SystemExit naming them."""
    try:
        config, passed_on, run_config = settings(argv)
        model, tokenizer, budget = model_budget(config, run_config)
        out = Path(config["OUT_DIR"])
        first, source_args = next(runs(config, passed_on, None, budget, run_config))
        check_cell(config["SCRIPT"], out, first, source_args)  # the later cells: each as it comes (run_cell)
    except ConfigError as e:
        fail(e)
    if not run_cell(config["SCRIPT"], out, first, source_args):
        raise SystemExit(f"{first} failed; see {out / (first + '.log')}")
    result = search(config, run_config, out, model, tokenizer, budget)
    del model
    plan = [(n, a) for n, a in runs(config, passed_on, result["counts"], budget, run_config) if n != first]
    try:
        failed = loop.run_cells(config["SCRIPT"], out, plan, "runs")
    except ConfigError as e:
        fail(e)
    found = collect(out, config)
    speed = speeds(found, run_config) if config["MEASURE_SPEED"] and config["GRANULARITY"] != "weights" else None
    print(write(out, config, result, speed))
    loop.finish(failed)


if __name__ == "__main__":
    main(sys.argv[1:])
