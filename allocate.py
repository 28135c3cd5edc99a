"""Per-layer pruning rates chosen by a reinforcement-learning agent, against uniform rates and one global threshold.

    python allocate.py --train_subset=16000          # MiniLM, heads+neurons (1/3 heads, 40% neurons), 3 seeds
    python allocate.py --granularity=weights --pruning_rate=0.7 --out_dir=sweeps/allocate-weights

The budget is what the script's rates remove (HEAD_RATE and NEURON_RATE, or PRUNING_RATE): every
allocation removes exactly as many heads, neurons or weights. For the first seed:
1. the uniform allocation runs through the early-bird pipeline (SCRIPT with CRITERION), keeping
   HELD_OUT train sentences out of training and the weights at the early bird (SAVE_EB_WEIGHTS);
2. the search: a PPO agent (stable-baselines3) walks the layers and allocates the budget (AMC, He et
   al. 2018); each allocation's reward is the task's headline metric (REWARD "metric"; or minus the
   loss) on the HELD_OUT train examples of the run's task (pairs tokenized as pairs) of those early-bird
   weights pruned by the criterion's scores, untrained (seconds, not a training). The dev set is
   never read. The search is checkpointed after every update: a killed search resumes.
Then for every seed, the best allocation found ("agent"), uniform rates and the global threshold run
through the whole pipeline (early-bird search with those rates, pruning, retraining), every run with
the same HELD_OUT sentences kept out. OUT_DIR/allocate.md holds the task's headline dev metric (mean ± std), paired
tests against the agent, the per-layer rates, the reward curve and, for heads+neurons, the inference
speed of each allocation measured side by side with the dense model.

Each training is one run of SCRIPT in its own process (`pruning.cells`): finished runs are skipped and
killed ones resume. Any other --key=value goes to every run (see `python bert.py --help`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pruning import allocation, experiment, grid, schema, stats, tables
from pruning.cells import check_cell, run_cell
from pruning.schema import RunResults
from pruning.state import read_run_masks
from pruning.tasks import METRIC_TITLES
from pruning.trainer import SNAPSHOT_FILE

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
SETTINGS = ("SCRIPT", "CRITERION", "GRANULARITY", "SEEDS", "ALLOCATIONS", "HELD_OUT", "EPISODES",
            "EPISODES_PER_UPDATE", "REWARD", "MAX_LAYER_RATE", "AGENT_SEED", "MEASURE_SPEED", "OUT_DIR")
KINDS_OF = {"heads+neurons": ("head", "neuron"), "weights": ("weight",)}
RATE_KEY = {"head": "HEAD_RATE", "neuron": "NEURON_RATE", "weight": "PRUNING_RATE"}
# What the study sets for every run itself.
STUDY_OWNS = {"--seed": "--seeds", "--trainer": "--criterion", "--threshold": "--allocations", "--mask_from": None,
              "--save_eb_weights": None, "--run_name": None, "--resume": None}


def settings(argv: list[str] | None = None) -> tuple[dict, list[str], dict]:
    """The study's settings, the arguments for every run and the runs' configuration, checked before any work."""
    config, passed_on, script = experiment.grid_settings(globals(), SETTINGS, argv, owned=STUDY_OWNS)
    run_config = experiment.configure(script, passed_on)
    if config["CRITERION"] not in experiment.trainers() or config["CRITERION"] == "dense":
        raise experiment.ConfigError(f"unknown pruning criterion {config['CRITERION']!r}; choose from "
                                     f"{', '.join(n for n in experiment.trainers() if n != 'dense')}")
    grid.check_granularity(config["GRANULARITY"])
    config["ALLOCATIONS"] = [a.strip() for a in config["ALLOCATIONS"].split(",") if a.strip()]
    wrong = [a for a in config["ALLOCATIONS"] if a not in ("agent", "uniform", "global")]
    if wrong or "uniform" not in config["ALLOCATIONS"]:
        raise experiment.ConfigError(f"--allocations={','.join(config['ALLOCATIONS'])}: give some of agent, uniform, "
                                     "global, comma-separated, with uniform (its first-seed run feeds the search)")
    config["SEEDS"] = grid.seeds(config["SEEDS"])
    for key in ("HELD_OUT", "EPISODES", "EPISODES_PER_UPDATE"):
        if config[key] < 1:
            raise experiment.ConfigError(f"{key} must be >= 1, got {config[key]}")
    headline = run_task(run_config).headline
    if config["REWARD"] == headline:  # the metric by its name
        config["REWARD"] = "metric"
    if config["REWARD"] not in allocation.SliceReward.METRICS:
        raise experiment.ConfigError(f"--reward={config['REWARD']}: choose metric (the task's headline, {headline}) "
                                     "or loss")
    if not 0 < config["MAX_LAYER_RATE"] < 1:
        raise experiment.ConfigError(f"MAX_LAYER_RATE must lie in (0, 1), got {config['MAX_LAYER_RATE']}")
    for kind in KINDS_OF[config["GRANULARITY"]]:
        rate = run_config[RATE_KEY[kind]]
        if isinstance(rate, tuple):
            raise experiment.ConfigError(f"--{RATE_KEY[kind].lower()} sets the budget: give one rate for the whole "
                                         "model, not one per layer (the agent chooses those)")
    for _, args in runs(config, passed_on):  # each kind of run's whole configuration
        experiment.validate(experiment.configure(script, args))
    return config, passed_on, run_config


def budget_rates(config: dict, run_config: dict) -> dict[str, float]:
    """The uniform rates (fractions) the budget is made from, by unit kind, as the source run recorded them
    (HEAD_RATE / NEURON_RATE, or PRUNING_RATE)."""
    return {kind: run_config[RATE_KEY[kind]] for kind in KINDS_OF[config["GRANULARITY"]]}


def rate_args(config: dict, run_config: dict, allocation_name: str, counts: dict | None, budget) -> list[str]:
    """The rate settings of one allocation: per-layer rates (agent, uniform) or one global threshold."""
    if allocation_name == "global":
        return [f"--{RATE_KEY[k].lower()}={r!r}" for k, r in budget_rates(config, run_config).items()]
    if budget is None:  # validation, before the model (and so its per-layer rates) is known
        return []
    rates = budget.rates(counts if allocation_name == "agent" else budget.uniform())
    return [f"--{RATE_KEY[k].lower()}={','.join(repr(r) for r in rs)}" for k, rs in rates.items()]


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
    """The runs' task (`pruning.tasks.Task`) from their TASK setting; the custom task's from its train
    split (`pruning.data.load_train`). Raises ConfigError for data that cannot be read."""
    from pruning import data, tasks
    settings = data.run_task(run_config)
    try:
        if tasks.known(settings["task"]) and settings["task"].lower() != tasks.CUSTOM:
            return tasks.get(settings["task"])
        return data.load_train(**settings)[0]
    except data.DataError as e:
        raise experiment.ConfigError(str(e)) from None


def model_budget(config: dict, run_config: dict):
    """(model, tokenizer, budget): what the script's rates remove from this model (its head sized for
    the runs' task)."""
    from pruning import models
    from pruning.units import PrunableUnits
    model, tokenizer, _ = models.load_model_and_tokenizer(run_config["MODEL"], run_config["TOKENIZER"],
                                                          num_labels=run_task(run_config).num_labels)
    try:
        budget = allocation.Budget.of(PrunableUnits(model, config["GRANULARITY"]), budget_rates(config, run_config),
                                      config["MAX_LAYER_RATE"])
    except ValueError as e:
        raise experiment.ConfigError(str(e)) from None
    return model, tokenizer, budget


def task_batches(rows, task, tokenizer, run_config: dict, batch_size: int = 128) -> list[dict]:
    """`rows` of the runs' task tokenized as the runs tokenize them (pairs as pairs, MAX_LENGTH,
    TRUNCATION) in fixed length-sorted batches (`allocation.batches_of`)."""
    from transformers import DataCollatorWithPadding

    from pruning import data
    encoded = data.tokenize(data.DatasetDict(rows=rows), tokenizer, run_config["MAX_LENGTH"], task,
                            run_config.get("TRUNCATION") or "head")["rows"]
    return allocation.batches_of(data.model_rows(encoded), DataCollatorWithPadding(tokenizer), batch_size)


def reward_setup(config: dict, run_config: dict, source: Path, model, tokenizer, budget):
    """The reward on the held-out train examples of the runs' task (`allocation.SliceReward`: its headline
    metric, or loss) and the criterion's scores, from the source run. Only the train file is read."""
    from safetensors.torch import load_file

    from pruning import data

    _, scores, _ = read_run_masks(str(source))
    if scores is None:
        experiment.fail(f"{source} kept no scores of its units (a run from before they were saved); delete it")
    model.load_state_dict(load_file(str(source / SNAPSHOT_FILE)))
    task, train, _ = data.load_train(**data.run_task(run_config))  # the train file only: the dev set is never read
    _, held = data.hold_out(train, config["HELD_OUT"])
    reward = allocation.SliceReward(model, config["GRANULARITY"], scores, budget,
                                    task_batches(held, task, tokenizer, run_config), config["REWARD"], task)
    return reward, scores


def search(config: dict, run_config: dict, out: Path, model, tokenizer, budget) -> dict:
    """Run (or resume, or read) the search; write allocation.json."""
    path = out / "allocation.json"
    if path.exists():
        return json.loads(path.read_text())
    source = out / f"uniform-s{config['SEEDS'][0]}"
    reward, scores = reward_setup(config, run_config, source, model, tokenizer, budget)
    env = allocation.AllocationEnv(budget, reward, allocation.global_rates(scores, budget))
    settings_ = allocation.AgentSettings(episodes=config["EPISODES"], episodes_per_update=config["EPISODES_PER_UPDATE"],
                                         seed=config["AGENT_SEED"])
    agent = allocation.Search(env, out / "search", settings_)
    with tqdm(total=config["EPISODES"], desc="search", unit="episode") as bar:
        def progress(done):
            bar.n = done
            bar.set_postfix_str(f"best {allocation.best(env.history)['reward']:.4f}")
            bar.refresh()
        history = agent.run(progress)
    best = allocation.best(history)
    references = {name: reward(counts) for name, counts in
                  (("uniform", budget.uniform()), ("global", _counts_of_rates(budget, env.global_rates)))}
    policy = agent.policy_counts()
    result = {"budget": budget.remove, "total": budget.total, "steps": [s.name for s in budget.steps],
              "counts": best["counts"], "rates": budget.rates(best["counts"]), "reward": best["reward"],
              "reward_metric": reward.name, "held_out": config["HELD_OUT"], "source": str(source),
              "episodes": len(history), "search_seconds": agent.seconds,
              "references": references, "uniform_counts": budget.uniform(),
              "global_counts": _counts_of_rates(budget, env.global_rates),
              "policy": {"counts": policy, "reward": reward(policy)},
              "history": [h["reward"] for h in history]}
    experiment.write_json(path, result)
    return result


def _counts_of_rates(budget, rates: dict[str, float]) -> dict[str, int]:
    return {s.name: round(rates[s.name] * s.size) for s in budget.steps}


# --- the report ------------------------------------------------------------------------------------
def collect(out: Path, config: dict) -> dict:
    """Finished comparison runs: found[allocation][seed]."""
    found: dict = {}
    for r in tables.load(out):
        name = Path(r.run_dir).name
        alloc, _, seed = name.rpartition("-s")
        if alloc in ("agent", "uniform", "global") and seed.isdigit():
            found.setdefault(alloc, {})[int(seed)] = r
    return found


def removed_per_layer(run: RunResults) -> dict[str, list[int]]:
    """Units each layer lost, by kind, from a run's final masks."""
    masks = read_run_masks(run.run_dir)[0]
    out: dict = {}
    for name, m in sorted(masks.items(), key=lambda kv: kv[0]):
        from pruning.units import layer_of
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

    from pruning import data, models
    firsts = {name: by_seed[min(by_seed)] for name, by_seed in found.items() if by_seed}
    if not firsts:
        return None
    task, datasets, _ = data.load(**data.run_task(run_config))
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
        s = search_result
        budget = ", ".join(f"{n:,} of {s['total'][k]:,} {k}s" for k, n in s["budget"].items())
        lines += [f"Budget: every allocation removes exactly {budget}. Search: {s['episodes']} episodes of PPO in "
                  f"{s['search_seconds'] / 60:.1f} min; reward = {reward_title(s['reward_metric'])} on "
                  f"{s['held_out']} held-out {task.title} train examples of the first seed's early-bird weights, "
                  "pruned and not trained.", "",
                  f"| allocation | reward: held-out {reward_title(s['reward_metric'])} (untrained) |", "|---|---|",
                  f"| agent (best episode) | {s['reward']:.4f} |",
                  f"| agent (the final policy, no exploration) | {s['policy']['reward']:.4f} |",
                  *(f"| {n} | {v:.4f} |" for n, v in s["references"].items()), ""]
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
        lines += ["", f"Speed: {speed['dense']['per_second']:.0f} dev sentences/s for the dense model "
                      f"({speed['rounds']} interleaved rounds, {speed['threads']} threads)."]
    lines += ["", "Units removed per layer (agent and uniform: the same in every seed; global: each seed's own "
              "threshold, the first seed shown):", ""]
    for name in config["ALLOCATIONS"]:
        by_seed = found.get(name, {})
        if by_seed:
            per = removed_per_layer(by_seed[min(by_seed)])
            lines.append(f"- {name}: " + "; ".join(f"{k} {v}" for k, v in per.items()))
    lines += ["", "![rates](allocate_rates.png)", "", "![reward](allocate_reward.png)", ""]
    text = "\n".join(lines)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "allocate.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "allocate.md")
    if found:
        plot_rates(found, config, out / "allocate_rates.png")
    if search_result:
        plot_reward(search_result, config, out / "allocate_reward.png")
    return text


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
    2018 AMC, `pruning.allocation`), then every allocation's pipeline runs and allocate.md. Bad settings
    exit with status 2 (`experiment.fail`); failed runs end in SystemExit naming them."""
    try:
        config, passed_on, run_config = settings(argv)
        model, tokenizer, budget = model_budget(config, run_config)
        out = Path(config["OUT_DIR"])
        first, source_args = next(runs(config, passed_on, None, budget, run_config))
        check_cell(config["SCRIPT"], out, first, source_args)  # the later cells: each as it comes (run_cell)
    except experiment.ConfigError as e:
        experiment.fail(e)
    if not run_cell(config["SCRIPT"], out, first, source_args):
        raise SystemExit(f"{first} failed; see {out / (first + '.log')}")
    result = search(config, run_config, out, model, tokenizer, budget)
    del model
    plan = [(n, a) for n, a in runs(config, passed_on, result["counts"], budget, run_config) if n != first]
    try:
        failed = grid.run_cells(config["SCRIPT"], out, plan, "runs")
    except experiment.ConfigError as e:
        experiment.fail(e)
    found = collect(out, config)
    speed = speeds(found, run_config) if config["MEASURE_SPEED"] and config["GRANULARITY"] != "weights" else None
    print(write(out, config, result, speed))
    grid.finish(failed)


if __name__ == "__main__":
    main(sys.argv[1:])
