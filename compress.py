"""Compress a finished run for CPU deployment and measure what it buys: size, speed, energy and its task's metrics.

    python compress.py runs/NAME                          # the variants below, into runs/NAME/compressed/
    python compress.py runs/NAME --dense=runs/DENSE_RUN   # dense reference rows with their accuracy
    python compress.py --help

Variants, each run by ONNX Runtime and by OpenVINO (RUNTIME; both CPU runtimes for BERT-class models) and
evaluated on the dev set of the run's task (`pruning.data.loading`, as the run tokenized it: pairs as pairs, segment
ids exported) in a fresh process from its files alone, with the task's metrics (`pruning.data.tasks`); every row
names the headline:
- fp32:   the exported model (the baseline, as saved); OpenVINO converts this same ONNX file;
- int8:   ONNX Runtime: dynamic quantization, int8 weights for every linear layer and the embeddings;
          OpenVINO: NNCF post-training quantization (int8 weights and activations, CALIBRATION_SENTENCES);
- mixed:  ONNX Runtime: the run's criterion ranks the encoder's matrices; the least important FOUR_BIT_FRACTION
          of the weights get 4 bits (blocks of BLOCK_SIZE), the rest int8; embeddings at EMBEDDING_BITS;
          OpenVINO: NNCF weight compression, INT4 (groups of BLOCK_SIZE) for FOUR_BIT_FRACTION, INT8 for the rest;
- sparse: (ONNX Runtime, unstructured runs) fp32 and int8 with mostly-zero tensors stored as bitmap + nonzero values;
- mixed+qat: (ONNX Runtime, QAT_STEPS > 0) mixed after a quantization-aware fine-tune of the 4-bit matrices;
- +trim:  (TRIM_VOCAB) fp32, int8 and mixed again with the word embeddings cut to the training data's tokens.
Beside them, in the same process and sitting: the run's model and a dense model in PyTorch fp32, and the
dense model in each runtime at fp32 and int8 (what a user would deploy instead). Every variant directory is a
deployable artifact (`pruning.deploy.artifact`: tokenizer, label names, model card, a loading example without
torch). Energy per 1,000 sentences where the machine has a readable counter (`pruning.deploy.energy`). Writes
compressed/compress.json, compressed/table.md and two plots. Settings, data and the mixed-precision plan
are checked before anything is written; the rest is made in compressed/.work and moved into place only
when all of it succeeded.

A resnet.py or mlp.py run takes its own path (`pruning.convnets.deploy`): fp32 and static int8 in both runtimes,
mixed (ONNX Runtime) for mlp.py runs only (ONNX Runtime has no 4-bit convolution: asked for on a resnet.py run it
is refused, by default skipped), and with --dense=<a finished dense run of the same script and architecture> that
model's int8 deployments in both runtimes beside them, with each row's ratio to the faster of the two.
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import contextlib
import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from datasets import DatasetDict
from torch.nn.utils import parametrize
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)

from pruning import host, settings
from pruning.convnets import deploy as convnet_deploy
from pruning.core.layouts import layout_of
from pruning.data import loading
from pruning.data.tasks import METRIC_TITLES
from pruning.deploy.precision import FakeQuant4, assign_bits, average_bits, matrix_importance, prunable_linears
from pruning.deploy import artifact, energy, runtimes, vocab
from pruning.run import experiment, pruning_config, schema, trainers
from pruning.run.measurements import parameter_split

RUN = ""                     # a finished run's directory (also accepted as the first argument)
VARIANTS = "int8,mixed,sparse"  # beside fp32: any of int8, mixed, sparse (skipped for structured runs), mixed+qat
RUNTIME = "auto"             # auto (both timed, the faster per precision named), onnxruntime, openvino, both
CALIBRATION_SENTENCES = 300  # OpenVINO int8: training sentences (never dev, seeded) for NNCF's quantization
TRIM_VOCAB = False           # also each pruned fp32/int8/mixed with the word embeddings cut to the training tokens
FOUR_BIT_FRACTION = 0.5      # mixed: at least this fraction of the encoder's matrix weights get 4 bits, least important first
EMBEDDING_BITS = 4           # mixed: 4 (block-quantized lookups) or 8; embeddings are half of MiniLM's parameters
IMPORTANCE = "run"           # mixed: "run" = the run's criterion (gradient for slimming/dense runs), or magnitude/gradient/undecayed
REVERSE_IMPORTANCE = False   # mixed: a control: the MOST important matrices get 4 bits
CALIBRATION_BATCHES = 8      # training-set batches (never dev) for gradient-based importance
BLOCK_SIZE = 32              # 4-bit weights: input columns per block (one scale and zero point each)
QAT_STEPS = 0                # mixed+qat: optimizer steps of quantization-aware fine-tuning (0 = no such variant)
QAT_LEARNING_RATE = 1e-5     # mixed+qat: AdamW learning rate (constant)
DENSE = ""                   # a finished dense run (of the same script for resnet.py / mlp.py runs): its model is the dense reference; "" = the run's architecture, untrained (speed and bytes only)
THREADS = 2                  # intra-op threads of every runtime
BATCH_SIZE = 64              # sentences per batch for throughput and accuracy
LATENCY_SENTENCES = 100      # batch-1 latency: median over this many dev sentences
ROUNDS = 3                   # timing rounds; the variants take turns in each
OUT_DIR = ""                 # "" = RUN/compressed

_KNOWN_VARIANTS = ("int8", "mixed", "sparse", "mixed+qat")
_RUNTIMES = ("auto", "onnxruntime", "openvino", "both")
_DEFAULTS = {k: v for k, v in dict(globals()).items() if k.isupper() and not k.startswith("_")}


def read_run(run: Path, what: str) -> schema.RunResults:
    """A finished run's results (`pruning.run.schema`); a file this code cannot read is a ConfigError."""
    try:
        return schema.read(run)
    except schema.SchemaError as e:
        raise settings.ConfigError(f"{what}: {e}") from None


def check(config: dict) -> schema.RunResults:
    """Everything that can be wrong with the input, before any work (a runtime's own limits asked of it:
    `check_block_size`); returns the run's results.json. Raises ConfigError naming the setting and the fix."""
    run = Path(config["RUN"]) if config["RUN"] else None
    if run is None:
        raise settings.ConfigError("name the run to compress: python compress.py runs/NAME")
    if not (run / "results.json").exists() or not (run / "model" / "config.json").exists():
        raise settings.ConfigError(f"{run} is not a finished run (no results.json and model/): wait for it to "
                                     "finish, or resume it with --resume=true --run_name=NAME")
    variants = [v for v in config["VARIANTS"].split(",") if v]
    unknown = [v for v in variants if v not in _KNOWN_VARIANTS]
    if unknown:
        raise settings.ConfigError(f"unknown variant(s) {', '.join(unknown)} in --variants; choose from "
                                     f"{', '.join(_KNOWN_VARIANTS)} (fp32 is always made)")
    if config["RUNTIME"] not in _RUNTIMES:
        raise settings.ConfigError(f"--runtime={config['RUNTIME']}: choose one of {', '.join(_RUNTIMES)}")
    if "mixed+qat" in variants and config["QAT_STEPS"] <= 0:
        raise settings.ConfigError("variant mixed+qat needs --qat_steps > 0")
    if config["QAT_STEPS"] < 0 or not config["QAT_LEARNING_RATE"] > 0:
        raise settings.ConfigError(f"--qat_steps must be >= 0 and --qat_learning_rate > 0, got {config['QAT_STEPS']} "
                                     f"and {config['QAT_LEARNING_RATE']}")
    if not 0 <= config["FOUR_BIT_FRACTION"] <= 1:
        raise settings.ConfigError(f"--four_bit_fraction={config['FOUR_BIT_FRACTION']}: must be in [0, 1]")
    if config["EMBEDDING_BITS"] not in (4, 8):
        raise settings.ConfigError(f"--embedding_bits={config['EMBEDDING_BITS']}: must be 4 or 8")
    check_block_size(config, variants)
    importance = config["IMPORTANCE"]
    if importance != "run" and importance not in criteria():
        raise settings.ConfigError(f"--importance={importance}: choose run or one of {', '.join(criteria())}")
    results = read_run(run, "--run")
    if config["DENSE"]:
        dense = Path(config["DENSE"])
        if not (dense / "results.json").exists() or not (dense / "model" / "config.json").exists():
            raise settings.ConfigError(f"--dense={dense} is not a finished run (no results.json and model/)")
        d = read_run(dense, "--dense")
        # the same model: the same source, or the dense run's own fine-tuned model/ as this run's starting point
        same = d.model_source == results.model_source or \
            Path(results.model_source).resolve() == (dense / "model").resolve()
        if d.trainer != "dense" or not same:
            raise settings.ConfigError(f"--dense={dense} is a {d.trainer} run of {d.model_source}; it must be "
                                       f"a dense run of the same model ({results.model_source}), or the dense run "
                                       "whose model/ this run started from")
    for key in ("THREADS", "BATCH_SIZE", "LATENCY_SENTENCES", "ROUNDS", "CALIBRATION_BATCHES", "CALIBRATION_SENTENCES"):
        if config[key] < 1:
            raise settings.ConfigError(f"--{key.lower()}={config[key]}: must be at least 1")
    return results


def criteria() -> dict[str, type]:
    """Criteria that score single weights, by name (the trainer registry's, `pruning.settings.TRAINERS`)."""
    return {name: cls.criterion_class for name, cls in trainers.trainers().items()
            if name != "dense" and "weights" in cls.criterion_class.granularities}


def importance_criterion(config: dict, results: schema.RunResults) -> tuple[str, type, dict]:
    """(name, class, options) of the criterion that ranks matrices, and the run's options for it."""
    known = criteria()
    name = results.trainer if config["IMPORTANCE"] == "run" else config["IMPORTANCE"]
    if name not in known:  # slimming's coefficients are folded away; a dense run has no criterion
        name = "gradient"
    options = pruning_config.criterion_options({**results.config.settings, "TRAINER": trainers.trainers()[name]})
    return name, known[name], options


def dense_reference(run_model, dense_dir: str, dense_layers: int | None = None):
    """The dense model to compare against: a dense run's, or the run's architecture with untrained weights
    (`dense_layers` encoder layers when whole layers were removed; None: the run model's count)."""
    if dense_dir:
        return AutoModelForSequenceClassification.from_pretrained(str(Path(dense_dir) / "model")).eval()
    arch = run_model.config.to_dict()
    for key in ("attention_heads_per_layer", "intermediate_size_per_layer", "kept_heads", "kept_layers", "auto_map",
                "architectures"):
        arch.pop(key, None)
    if dense_layers is not None and getattr(run_model.config, "kept_layers", None) is not None:
        arch.pop("layer_types", None)  # the family's default pattern for the dense layer count
        arch[layout_of(run_model).config_layers] = dense_layers
    kind = arch.pop("model_type").removeprefix("pruned_")
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(kind, **arch)).eval()


def encode(rows, task, tokenizer, results: schema.RunResults):
    """`rows` of the run's task tokenized as the run tokenized them (pairs as pairs, its MAX_LENGTH and
    TRUNCATION): a `datasets.Dataset` (`pruning.data.loading.tokenize`)."""
    return loading.tokenize(DatasetDict(rows=rows), tokenizer, results.config.max_length, task,
                         results.config.settings.get("TRUNCATION") or "head")["rows"]


def calibration_batches(train, task, results: schema.RunResults, tokenizer, n: int):
    """`n` batches of 32 examples of the training split (seeded by the run's seed), never the dev set:
    padded tensors of the model's inputs (segment ids of a pair included) and labels."""
    features = loading.model_rows(encode(loading.subset(train, 32 * n, results.config.seed + 1), task, tokenizer, results))
    collate = DataCollatorWithPadding(tokenizer)
    return [collate(features[i:i + 32]) for i in range(0, len(features), 32)]


def bit_plan(graph, model, bits: dict[str, int], embedding_bits: int) -> tuple[list[str], list[str]]:
    """The exported graph's nodes to quantize at 4 and at 8 bits: the encoder's matrices as `bits` says, the
    embedding lookups at `embedding_bits`, the pooler and classifier (Gemm) at 8."""
    weights = {n: m.weight.detach().numpy() for n, m in prunable_linears(model).items()}
    nodes = runtimes.linear_initializers(graph, weights)
    embeddings = runtimes.embedding_gathers(graph)
    four = [nodes[n][0] for n, b in bits.items() if b == 4] + (embeddings if embedding_bits == 4 else [])
    eight = [nodes[n][0] for n, b in bits.items() if b == 8] + (embeddings if embedding_bits == 8 else [])
    return four, eight + [n.name for n in graph.graph.node if n.op_type == "Gemm"]


def qat_finetune(model, four_bit: list[str], train, config: dict, tokenizer, seed: int, work: Path):
    """Fine-tune a copy of `model` with the 4-bit matrices fake-quantized (straight-through), pruned zeros held
    at zero; returns it with the quantized weights baked in. HF's Trainer runs the steps."""
    class KeepZeros(torch.nn.Module):
        def __init__(self, mask):
            super().__init__()
            self.register_buffer("mask", mask)

        def forward(self, weight):
            return weight * self.mask

    student = copy.deepcopy(model).train()
    linears = prunable_linears(student)
    for name, linear in linears.items():
        mask = linear.weight.detach() != 0
        if not mask.all():
            parametrize.register_parametrization(linear, "weight", KeepZeros(mask.to(linear.weight.dtype)))
        if name in four_bit:
            parametrize.register_parametrization(linear, "weight", FakeQuant4(config["BLOCK_SIZE"]))
    args = TrainingArguments(output_dir=str(work / "qat"), max_steps=config["QAT_STEPS"],
                             per_device_train_batch_size=32, learning_rate=config["QAT_LEARNING_RATE"], lr_scheduler_type="constant",
                             weight_decay=0.0, save_strategy="no", report_to=[], logging_steps=50,
                             seed=seed, disable_tqdm=False, use_cpu=True)
    Trainer(model=student, args=args, train_dataset=train,
            data_collator=DataCollatorWithPadding(tokenizer)).train()
    for linear in linears.values():
        if parametrize.is_parametrized(linear, "weight"):
            parametrize.remove_parametrizations(linear, "weight", leave_parametrized=True)
    return student.eval()


def time_variants(runners: dict, batches, singles, rounds: int, counter=None) -> dict:
    """Sentences/s at batch BATCH_SIZE (the whole dev set) and median batch-1 latency, the variants taking
    turns in each round. Each figure is the best of the rounds (noise on a shared machine only ever slows
    a round down), and its ratio is taken to the best of the dense PyTorch model's rounds. With an energy
    `counter` (`pruning.deploy.energy`: read() and joules(before, after)), the joules of each batch-64 pass too:
    "joules_per_1000" is the least of the rounds per 1,000 sentences (other load only ever adds joules);
    without one it is None."""
    sentences = sum(len(b["input_ids"]) for b in batches)
    per_round = {name: {"throughput": [], "latency": [], "joules": []} for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run(singles[0])  # warm-up
            before = counter.read() if counter is not None else None
            started = time.perf_counter()
            for b in batches:
                run(b)
            per_round[name]["throughput"].append(sentences / (time.perf_counter() - started))
            if counter is not None:
                per_round[name]["joules"].append(counter.joules(before, counter.read()))
            latencies = []
            for s in singles:
                started = time.perf_counter()
                run(s)
                latencies.append(time.perf_counter() - started)
            per_round[name]["latency"].append(statistics.median(latencies))
    best = {name: (max(r["throughput"]), min(r["latency"])) for name, r in per_round.items()}
    dense_throughput, dense_latency = best["dense · PyTorch fp32"]
    return {name: {"sentences_per_s": throughput, "latency_ms": 1000 * latency,
                   "throughput_ratio": throughput / dense_throughput, "latency_ratio": latency / dense_latency,
                   "joules_per_1000": (energy.joules_per_thousand(min(per_round[name]["joules"]), sentences)
                                       if counter is not None else None),
                   "rounds": per_round[name]}
            for name, (throughput, latency) in best.items()}


_RUNTIME_TITLES = {"onnxruntime": "ORT", "openvino": "OpenVINO", "pytorch": "PyTorch"}
_PRECISION_NOTES = {
    ("onnxruntime", "fp32"): "fp32 (exported with torch.onnx, ONNX Runtime's BERT fusions)",
    ("onnxruntime", "int8"): "int8 weights per channel for every linear layer and the embeddings, activations "
                             "quantized on the fly (ONNX Runtime dynamic quantization)",
    ("onnxruntime", "mixed"): "8/4-bit: the least important matrices' weights at 4 bits (blocks), the rest int8 "
                              "(ONNX Runtime MatMulNBits)",
    ("onnxruntime", "mixed+qat"): "8/4-bit after quantization-aware fine-tuning",
    ("openvino", "fp32"): "fp32 (the exported ONNX file converted by OpenVINO)",
    ("openvino", "int8"): "int8 weights and activations (NNCF post-training quantization, preset mixed, "
                          "model type transformer)",
    ("openvino", "mixed"): "INT4 weights (groups) for a ratio of the matrices, INT8 for the rest, activations "
                           "fp32 (NNCF weight compression)",
}


def command_line(config: dict) -> str:
    """The compress.py command that gives `config`: the run, then every setting that is not the default."""
    changed = [f"--{k.lower()}={v}" for k, v in config.items()
               if k in _DEFAULTS and k not in ("RUN",) and v != _DEFAULTS[k]]
    return " ".join(["python compress.py", config["RUN"], *changed])


def vocabulary_keep(train_rows, tokenizer, model) -> tuple[np.ndarray, int]:
    """(kept ids, the unknown token's id) for TRIM_VOCAB: every id of the tokenized training rows and
    the tokenizer's special tokens. Raises ConfigError for a tokenizer without an unknown token."""
    if tokenizer.unk_token_id is None:
        raise settings.ConfigError(f"--trim_vocab: the tokenizer ({type(tokenizer).__name__}) has no unknown "
                                     "token to map unseen tokens to; run without --trim_vocab")
    vocab_size = model.get_input_embeddings().num_embeddings
    keep = vocab.seen_ids(train_rows["input_ids"], tokenizer.all_special_ids, vocab_size)
    return keep, tokenizer.unk_token_id


def runtimes_of(config: dict) -> tuple[str, ...]:
    """The runtimes RUNTIME makes variants for: both for auto and both, else the one named."""
    return ("onnxruntime", "openvino") if config["RUNTIME"] in ("auto", "both") else (config["RUNTIME"],)


def check_block_size(config: dict, variants: list[str]) -> None:
    """BLOCK_SIZE (input columns per 4-bit block) against each runtime that will use it. ONNX Runtime (mixed,
    mixed+qat) is asked whether its 4-bit quantizer and kernels take it (`runtimes.four_bit_block_size_taken`:
    onnxruntime 1.32 takes 16 to 256), and a refusal names the sizes it takes. NNCF (OpenVINO's mixed) takes
    any group of at least 1 column (a matrix whose width the group does not divide gets a smaller one:
    `runtimes.compress_openvino_weights`). Raises ConfigError."""
    size = config["BLOCK_SIZE"]
    if size < 1:
        raise settings.ConfigError(f"--block_size={size}: must be at least 1 (input columns per 4-bit block)")
    if "onnxruntime" in runtimes_of(config) and {"mixed", "mixed+qat"} & set(variants) \
            and not runtimes.four_bit_block_size_taken(size):
        import onnxruntime
        taken = ", ".join(map(str, runtimes.four_bit_block_sizes()))
        raise settings.ConfigError(
            f"--block_size={size}: ONNX Runtime {onnxruntime.__version__}'s 4-bit quantizer takes blocks of "
            f"{taken} input columns; choose one of those (or --runtime=openvino, or leave mixed and mixed+qat out "
            "of --variants)")


def mixed_plan(config: dict, results: schema.RunResults, model, train, task, tokenizer) -> dict:
    """Which encoder matrices get 4 bits and which 8 in the ONNX Runtime mixed variants, from the PyTorch
    model alone (so that it is decided before anything is written): the importance criterion
    (`importance_criterion`) scores each matrix on CALIBRATION_BATCHES batches of the `train` split when it
    ranks what it observes (`pruning.deploy.precision.matrix_importance`), and `assign_bits` gives the least
    important (the most, with REVERSE_IMPORTANCE) 4 bits. Returns compress.json's "mixed" record: importance,
    bits and sizes by module name, the fraction and average bits reached, EMBEDDING_BITS and BLOCK_SIZE.
    Raises what the criterion raises (ValueError, RuntimeError) when it cannot score."""
    name, criterion, options = importance_criterion(config, results)
    calibration = (calibration_batches(train, task, results, tokenizer, config["CALIBRATION_BATCHES"])
                   if criterion.observes else ())
    importance = matrix_importance(model, criterion, options, calibration, seed=results.config.seed)
    sizes = {n: m.weight.numel() for n, m in prunable_linears(model).items()}
    ranking = {n: -v for n, v in importance.items()} if config["REVERSE_IMPORTANCE"] else importance
    bits = assign_bits(ranking, sizes, config["FOUR_BIT_FRACTION"])
    return {"importance": name, "reversed": config["REVERSE_IMPORTANCE"], "importance_options": options,
            "calibration_batches": len(calibration), "matrix_importance": importance, "bits": bits, "sizes": sizes,
            "four_bit_fraction": sum(sizes[n] for n in bits if bits[n] == 4) / sum(sizes.values()),
            "average_encoder_bits": average_bits(bits, sizes),
            "embedding_bits": config["EMBEDDING_BITS"], "block_size": config["BLOCK_SIZE"]}


@contextlib.contextmanager
def staging(out: Path):
    """A fresh `out/.work` (an earlier one removed) for everything this invocation writes before it is
    published (`publish`); removed when the block ends, whether it succeeded or failed, and `out` with it
    when this invocation created `out` and left it empty. Yields the work directory."""
    created = not out.exists()
    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def publish(work: Path, out: Path, files: list[str]) -> None:
    """Move each variant directory of `work`/variants into `out` (each replacing the one of its name, which
    is removed only after the move), then each of `files` (names in `work`), in order: compress.json last,
    so that it only ever describes variants that are in place."""
    for directory in sorted(p for p in (work / "variants").iterdir() if p.is_dir()):
        runtimes.replace_directory(directory, out / directory.name)
    for name in files:
        os.replace(work / name, out / name)


@dataclass
class Job:
    """What every phase of a compression reads: the settings, the run, its model and data, and the plan."""
    config: dict
    results: schema.RunResults
    run: Path
    out: Path
    variants: list[str]
    runtime_names: tuple[str, ...]
    model: object
    tokenizer: object
    dense: object
    task: object
    datasets: object
    dev: object
    trimmed: object = None
    keep: object = None
    plan: dict | None = None


def main(config: dict) -> None:
    """Export, quantize and pack the run's model into each variant (`pruning.deploy.runtimes`) in each runtime, evaluate
    and time them side by side, write each variant's artifact files and model card (`pruning.deploy.artifact`),
    then compress.json, table.md and the two plots to OUT_DIR (default RUN/compressed).
    Raises ConfigError (from `check`) for bad input, before any work. Everything that can refuse without
    the exported graph (the settings, the data, the mixed-precision plan) is done before anything is
    written; the rest is written into OUT_DIR/.work and moved into place only once every variant is made,
    evaluated and timed, so a failure leaves OUT_DIR as it was."""
    if config["RUN"] and convnet_deploy.is_convnet_run(config["RUN"]):  # resnet.py / mlp.py runs take their own path
        convnet_deploy.compress(config, variants_named=config["VARIANTS"] != _DEFAULTS["VARIANTS"])
        return
    job = prepare(config, check(config))
    with staging(job.out) as work:
        record, rows, dev_file = make_variants(job, work)
        evaluate_variants(job, record, rows, dev_file, work / "variants")
        time_side_by_side(job, record, rows, dev_file)
        compare(job, record)
        write_cards(job, record, rows)
        table = write_report(job, record, work)
        publish(work, job.out, ["table.md", "accuracy_vs_bytes.png", "accuracy_vs_speed.png", "compress.json"])
    print("\n" + table + f"\nwritten: {job.out}/compress.json, table.md, accuracy_vs_bytes.png, accuracy_vs_speed.png")


def prepare(config: dict, results: schema.RunResults) -> Job:
    """The variants this run gets (sparse is skipped for a heads+neurons model, the ONNX Runtime-only variants without
    ONNX Runtime), the run's model and tokenizer, the dense reference, the task's data (the dev set tokenized as the
    run tokenized it), the trimmed model (TRIM_VOCAB) and the mixed-precision plan: everything that can refuse before
    anything is written. Raises ConfigError as `mixed_plan` and `vocabulary_keep` do."""
    run = Path(config["RUN"])
    out = Path(config["OUT_DIR"]) if config["OUT_DIR"] else run / "compressed"
    variants = [v for v in config["VARIANTS"].split(",") if v]
    runtime_names = runtimes_of(config)
    torch.set_num_threads(config["THREADS"])
    if results.config.granularity != "weights" and "sparse" in variants:
        print("sparse: skipped, a heads+neurons model has its pruned units removed, not zeroed")
        variants.remove("sparse")
    if "onnxruntime" not in runtime_names and {"sparse", "mixed+qat"} & set(variants):
        print("sparse, mixed+qat: skipped, they are ONNX Runtime variants")
        variants = [v for v in variants if v not in ("sparse", "mixed+qat")]
    model = AutoModelForSequenceClassification.from_pretrained(str(run / "model"), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run / "model"), trust_remote_code=True)  # no prompt for our config
    structure = results.pruning.structure if results.pruning else None  # a dense run has no pruning section
    dense = dense_reference(model, config["DENSE"], len(structure.heads_total_per_layer) if structure else None)
    task, datasets, _ = loading.load(**loading.run_task(results.config.settings))
    job = Job(config, results, run, out, variants, runtime_names, model, tokenizer, dense, task, datasets,
              encode(datasets[task.dev], task, tokenizer, results))
    if config["TRIM_VOCAB"]:
        job.keep, unk = vocabulary_keep(encode(datasets["train"], task, tokenizer, results), tokenizer, model)
        job.trimmed = vocab.trim_vocabulary(copy.deepcopy(model), job.keep, unk).eval()
    if "onnxruntime" in runtime_names and ("mixed" in variants or "mixed+qat" in variants):
        job.plan = mixed_plan(config, results, model, datasets["train"], task, tokenizer)
        bits = job.plan["bits"]
        reversed_text = " (reversed)" if config["REVERSE_IMPORTANCE"] else ""
        print(f"mixed precision: {job.plan['importance']} importance{reversed_text}; {sum(b == 4 for b in bits.values())} "
              f"of {len(bits)} matrices at 4 bits ({100 * job.plan['four_bit_fraction']:.0f}% of their weights)")
    return job


def make_variants(job: Job, work: Path) -> tuple[dict, dict, Path]:
    """Write every variant into `work`/variants (the ONNX export that only OpenVINO uses into `work`), each with its
    artifact files, and the dev set (`work`/dev.npz). Returns the compress.json record so far, the rows to measure
    (label -> (directory, runtime, which model, precision), in table order: PyTorch, then the dense deployments,
    the pruned ones, the trimmed ones; ORT before OpenVINO) and the dev file."""
    config, results, run, model, tokenizer, task = job.config, job.results, job.run, job.model, job.tokenizer, job.task
    runtime_names, variants = job.runtime_names, job.variants
    staged = work / "variants"
    staged.mkdir()
    dev_file = work / "dev.npz"
    inputs = runtimes.model_inputs(model, job.dev.column_names)
    runtimes.write_dev(dev_file, job.dev, inputs, tokenizer.pad_token_id, task.metrics)
    probe = runtimes.dev_batches(dev_file, config["BATCH_SIZE"])[0][0]
    labels = list(task.label_names) if task.label_names is not None else None
    pair = len(task.text_columns) > 1

    def write_variant(name: str, make, where: Path = staged):
        directory = where / name
        directory.mkdir()
        extra = make(directory)
        artifact.write_files(directory, tokenizer, labels, inputs, results.config.max_length, pair)
        print(f"  {name}: {runtimes.disk_bytes(directory) / 1e6:.1f} MB")
        return extra

    record = {"run": str(run), "dense_run": config["DENSE"] or None, "config": config,
              "task": {"name": task.name, "title": task.title, "metrics": list(task.metrics), "headline": task.headline,
                       "dev_set": task.dev},
              "date": time.strftime("%Y-%m-%d %H:%M"), "threads": config["THREADS"], "runtimes": list(runtime_names),
              "versions": versions(runtime_names), "cpu": host.cpu_name(), "command": command_line(config),
              "variants": {}}
    rows = {"dense · PyTorch fp32": ((Path(config["DENSE"]) / "model") if config["DENSE"] else None, "pytorch",
                                     "dense", "fp32"),
            "pruned · PyTorch fp32": (run / "model", "pytorch", "pruned", "fp32")}

    def add(which: str, runtime: str, precision: str, directory: Path) -> None:
        rows[f"{which} · {_RUNTIME_TITLES[runtime]} {precision}"] = (directory, runtime, which, precision)

    # The ONNX export is ONNX Runtime's fp32 variant and OpenVINO's source; without ONNX Runtime it is not published.
    onnx_home = staged if "onnxruntime" in runtime_names else work
    sources = {"dense": (job.dense, "dense-"), "pruned": (model, "")}
    if job.trimmed is not None:
        sources["pruned+trim"] = (job.trimmed, "")
    print(f"exporting {run / 'model'} and the dense reference to ONNX ...")
    for which, (m, prefix) in sources.items():
        suffix = "+trim" if which.endswith("+trim") else ""
        write_variant(f"{prefix}fp32{suffix}", lambda d, m=m: runtimes.export_onnx(m, d, probe), onnx_home)
    calibration = None
    if "openvino" in runtime_names:
        calibration = openvino_calibration(job, inputs)
        record["openvino_int8"] = {"calibration_sentences": len(calibration), "preset": "mixed",
                                   "model_type": "transformer", "seed": results.config.seed + 3}
    int8_wanted = "int8" in variants
    for which, (m, prefix) in sources.items():
        suffix = "+trim" if which.endswith("+trim") else ""
        base = which.removesuffix("+trim")
        fp32_dir = onnx_home / f"{prefix}fp32{suffix}"
        if "onnxruntime" in runtime_names:
            add(base, "onnxruntime", f"fp32{suffix}", fp32_dir)
            if int8_wanted or which == "dense":  # the dense int8 rows are what a user would deploy instead
                write_variant(f"{prefix}int8{suffix}", lambda d, s=fp32_dir: runtimes.quantize_int8(s, d))
                add(base, "onnxruntime", f"int8{suffix}", staged / f"{prefix}int8{suffix}")
        if "openvino" in runtime_names:
            ov_fp32 = staged / f"{prefix}ov-fp32{suffix}"
            write_variant(ov_fp32.name, lambda d, s=fp32_dir: runtimes.convert_openvino(s, d, probe))
            add(base, "openvino", f"fp32{suffix}", ov_fp32)
            if int8_wanted or which == "dense":
                info = write_variant(f"{prefix}ov-int8{suffix}",
                                     lambda d: runtimes.quantize_openvino_int8(ov_fp32, d, calibration))
                record["openvino_int8"].setdefault("fake_quantize_ops", {})[which] = info["fake_quantize_ops"]
                add(base, "openvino", f"int8{suffix}", staged / f"{prefix}ov-int8{suffix}")
            if "mixed" in variants and which != "dense":
                info = write_variant(f"ov-mixed{suffix}", lambda d: runtimes.compress_openvino_weights(
                    ov_fp32, d, config["FOUR_BIT_FRACTION"], config["BLOCK_SIZE"]))
                record.setdefault("openvino_mixed", {})[which] = info
                add(base, "openvino", f"mixed{suffix}", staged / f"ov-mixed{suffix}")

    if job.plan is not None:
        record["mixed"] = job.plan
        bits = job.plan["bits"]
        if "mixed" in variants:
            for which, (m, _) in sources.items():
                if which == "dense":
                    continue
                suffix = "+trim" if which.endswith("+trim") else ""
                fp32_dir = staged / f"fp32{suffix}"
                four, eight = bit_plan(onnx.load(str(fp32_dir / runtimes.ONNX_FILE)), m, bits, config["EMBEDDING_BITS"])
                write_variant(f"mixed{suffix}", lambda d, s=fp32_dir, f4=four, f8=eight: runtimes.quantize_mixed(
                    s, d, f4, f8, config["BLOCK_SIZE"]))
                add("pruned", "onnxruntime", f"mixed{suffix}", staged / f"mixed{suffix}")
        if "mixed+qat" in variants:
            train = encode(loading.subset(job.datasets["train"], 32 * config["QAT_STEPS"], results.config.seed + 2),
                           task, tokenizer, results)
            four_modules = [n for n, b in bits.items() if b == 4]
            student = qat_finetune(model, four_modules, train, config, tokenizer, results.config.seed, work)
            student_fp32 = work / "fp32+qat"  # staging only: the variant is its quantized form
            student_fp32.mkdir()
            runtimes.export_onnx(student, student_fp32, probe)
            four_qat, eight_qat = bit_plan(onnx.load(str(student_fp32 / runtimes.ONNX_FILE)), student, bits,
                                           config["EMBEDDING_BITS"])
            write_variant("mixed+qat", lambda d: runtimes.quantize_mixed(student_fp32, d, four_qat, eight_qat,
                                                                         config["BLOCK_SIZE"]))
            add("pruned", "onnxruntime", "mixed+qat", staged / "mixed+qat")
    if "sparse" in variants:
        for base in ("fp32", "int8") if "int8" in variants else ("fp32",):
            stats = write_variant(f"{base}+sparse", lambda d, b=base: runtimes.pack_sparse(staged / b, d))
            record.setdefault("sparse", {})[base] = stats
            add("pruned", "onnxruntime", f"{base}+sparse", staged / f"{base}+sparse")
    return record, dict(sorted(rows.items(), key=_table_position)), dev_file


def openvino_calibration(job: Job, inputs) -> list[dict]:
    """NNCF's calibration samples for OpenVINO int8: CALIBRATION_SENTENCES training sentences (never dev, seeded),
    one sentence per sample, each with every input the model takes."""
    rows = encode(loading.subset(job.datasets["train"], job.config["CALIBRATION_SENTENCES"], job.results.config.seed + 3),
                  job.task, job.tokenizer, job.results)
    calibration = [{k: np.asarray([r[k]], dtype=np.int64) for k in inputs if k in r} | (
        {"attention_mask": np.ones((1, len(r["input_ids"])), dtype=np.int64)}) for r in loading.model_rows(rows)]
    for c in calibration:
        c.setdefault("token_type_ids", np.zeros_like(c["input_ids"]))
    return calibration


_PRECISIONS = ["fp32", "int8", "mixed", "mixed+qat", "fp32+sparse", "int8+sparse"]
_RUNTIME_ORDER = {"pytorch": 0, "onnxruntime": 1, "openvino": 2}


def _table_position(item):
    _, (_, runtime, which, precision) = item
    return (runtime != "pytorch", which != "dense", precision.endswith("+trim"), _RUNTIME_ORDER[runtime],
            _PRECISIONS.index(precision.removesuffix("+trim")))


def evaluate_variants(job: Job, record: dict, rows: dict, dev_file: Path, staged: Path) -> None:
    """Accuracy and bytes of every row: each variant evaluated in a fresh process from its files alone (the dense rows
    only when DENSE names a trained run), its bytes on disk and its word embeddings' share; written into
    record["variants"], with the directory each variant will have once published."""
    config, models = job.config, {"dense": job.dense, "pruned": job.model}
    params = {k: parameter_split(m) for k, m in models.items()}
    nonzero = {k: sum(int((p != 0).sum()) for p in m.parameters()) for k, m in models.items()}
    if job.trimmed is not None:
        params["pruned+trim"] = parameter_split(job.trimmed)
        nonzero["pruned+trim"] = sum(int((p != 0).sum()) for p in job.trimmed.parameters())
        record["trim_vocab"] = {"kept_tokens": len(job.keep), "vocabulary": job.model.get_input_embeddings().num_embeddings,
                                "unk_id": job.tokenizer.unk_token_id}
    for label, (directory, runtime, which, precision) in rows.items():
        key = "pruned+trim" if precision.endswith("+trim") else which
        published = job.out / directory.name if directory is not None and directory.parent == staged else directory
        entry = {"runtime": {"pytorch": "PyTorch", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}[runtime],
                 "model": which, "precision": precision, "trimmed_vocabulary": key == "pruned+trim",
                 "parameters": params[key]["total"], "nonzero_parameters": nonzero[key],
                 "directory": str(published) if published else None}
        if directory is not None and (which == "pruned" or config["DENSE"]):
            print(f"evaluating {label} in a fresh process ...")
            entry.update(runtimes.evaluate_in_fresh_process(directory, dev_file, config["THREADS"], config["BATCH_SIZE"]))
        if runtime == "pytorch":
            if directory is not None:
                entry["bytes"] = (directory / "model.safetensors").stat().st_size
            else:
                with tempfile.TemporaryDirectory() as t:
                    job.dense.save_pretrained(t)
                    entry["bytes"] = os.path.getsize(Path(t) / "model.safetensors")
            table = models[which].get_input_embeddings().weight
            entry["word_embedding_bytes"] = table.numel() * table.element_size()
        else:
            entry["bytes"] = runtimes.disk_bytes(directory)
            entry["word_embedding_bytes"] = runtimes.word_embedding_bytes(directory)
        entry["bytes_without_word_embeddings"] = entry["bytes"] - entry["word_embedding_bytes"]
        record["variants"][label] = entry


def time_side_by_side(job: Job, record: dict, rows: dict, dev_file: Path) -> None:
    """Speed and energy: every row timed in this process, taking turns on the same batches (ROUNDS rounds; batch
    BATCH_SIZE and batch 1 over LATENCY_SENTENCES), added to record["variants"]."""
    config, models = job.config, {"dense": job.dense, "pruned": job.model}
    batches, _ = runtimes.dev_batches(dev_file, config["BATCH_SIZE"])
    singles = runtimes.dev_batches(dev_file, 1)[0][:config["LATENCY_SENTENCES"]]
    counter, counter_text = energy.find_counter()
    record["energy_counter"] = counter_text
    print(f"timing {len(rows)} variants side by side ({config['ROUNDS']} rounds, {config['THREADS']} threads; "
          f"energy: {counter_text}) ...")
    runners = {label: (runtimes.pytorch_runner(models[which]) if runtime == "pytorch"
                       else runtimes.runner(directory, config["THREADS"]))
               for label, (directory, runtime, which, _) in rows.items()}
    for label, speed in time_variants(runners, batches, singles, config["ROUNDS"], counter).items():
        record["variants"][label].update(speed)


def compare(job: Job, record: dict) -> None:
    """Each row against the references of this sitting: compression against the dense fp32 ONNX file, speed against
    the fastest dense deployment, the headline against dense PyTorch; with RUNTIME=auto, the faster runtime per
    (model, precision)."""
    reference = "dense · ORT fp32" if "dense · ORT fp32" in record["variants"] else "dense · OpenVINO fp32"
    reference_bytes = record["variants"][reference]["bytes"]
    record["compression_reference"] = reference
    dense_rows = {k: v for k, v in record["variants"].items() if v["model"] == "dense"}
    fastest = max(dense_rows, key=lambda k: dense_rows[k]["sentences_per_s"])
    record["fastest_dense"] = fastest
    headline = job.task.headline
    dense_score = record["variants"]["dense · PyTorch fp32"].get(headline)
    for entry in record["variants"].values():
        entry["compression"] = reference_bytes / entry["bytes"]
        entry["bits_per_parameter"] = 8 * entry["bytes"] / entry["parameters"]
        entry["vs_fastest_dense"] = entry["sentences_per_s"] / record["variants"][fastest]["sentences_per_s"]
        if dense_score is not None and entry.get(headline) is not None:
            entry["headline_vs_dense"] = entry[headline] - dense_score
    if job.config["RUNTIME"] == "auto":
        record["runtime_choice"] = runtime_choice(record["variants"])
        for choice in record["runtime_choice"].values():
            record["variants"][choice["label"]]["chosen"] = True


def write_cards(job: Job, record: dict, rows: dict) -> None:
    """Each runtime variant's model card (`pruning.deploy.artifact.write_card`), with the figures measured above."""
    for label, (directory, runtime, _, _) in rows.items():
        if runtime != "pytorch":
            artifact.write_card(directory, f"{job.run.name}: {label}", card_facts(record, label, job.results),
                                record["command"], record["date"], results=job.results,
                                measured=record["variants"][label])


def write_report(job: Job, record: dict, work: Path) -> str:
    """table.md, the two plots and compress.json into `work`; returns the table."""
    table = markdown(record, job.results)
    (work / "table.md").write_text(table)
    plots(record, work)
    schema.write_json(work / "compress.json", record)
    return table


def versions(runtime_names) -> dict:
    """The runtime_names' package versions (and torch's), for the record and the model cards."""
    import onnxruntime
    found = {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}
    if "openvino" in runtime_names:
        import nncf
        import openvino
        found.update(openvino=openvino.__version__, nncf=nncf.__version__)
    return found


def runtime_choice(variants: dict) -> dict:
    """For each (model, precision) measured in both runtimes: the faster at batch 64 in this sitting,
    {"runtime", "label", "sentences_per_s": {runtime: figure}}, keyed "pruned int8", "dense fp32", ..."""
    groups: dict[str, dict] = {}
    for label, v in variants.items():
        if v["runtime"] != "PyTorch":
            groups.setdefault(f"{v['model']} {v['precision']}", {})[v["runtime"]] = (label, v["sentences_per_s"])
    return {key: {"runtime": max(g, key=lambda r: g[r][1]), "label": g[max(g, key=lambda r: g[r][1])][0],
                  "sentences_per_s": {r: s for r, (_, s) in g.items()}}
            for key, g in groups.items() if len(g) > 1}


def card_facts(record: dict, label: str, results: schema.RunResults) -> list[tuple[str, str]]:
    """The (name, value) rows of a variant's model card: what was pruned and quantized, and what was measured."""
    v = record["variants"][label]
    task = record_task(record)
    runtime_key = "openvino" if v["runtime"] == "OpenVINO" else "onnxruntime"
    precision = v["precision"].removesuffix("+trim").removesuffix("+sparse")
    dense_params = record["variants"]["dense · PyTorch fp32"]["parameters"]
    if v["model"] == "dense":
        pruned = f"nothing: the dense reference ({record['dense_run'] or 'untrained, for speed and bytes only'})"
    else:
        pruned = (f"{results.trainer} ({results.config.granularity}) run `{record['run']}`: {v['parameters']:,} "
                  f"parameters, {v['parameters'] / dense_params:.2f}x the dense model's {dense_params:,}")
    facts = [("task", f"{task['title']} ({', '.join(task['metrics'])})"), ("pruned", pruned),
             ("quantized", _PRECISION_NOTES.get((runtime_key, precision), precision)),
             ("runtime", f"{v['runtime']} {record['versions'].get(runtime_key, '')}, {record['threads']} threads")]
    if "+sparse" in v["precision"]:
        facts.append(("storage", "mostly-zero tensors as bitmap + nonzero values (sparse.safetensors)"))
    if v["trimmed_vocabulary"]:
        t = record["trim_vocab"]
        facts.append(("vocabulary", f"{t['kept_tokens']:,} of {t['vocabulary']:,} tokens kept (those of the training "
                                    "data and the special tokens); the model maps every other id to the unknown token"))
    headline = task["headline"]
    if v.get(headline) is not None:
        facts.append((f"dev {headline}", f"{v[headline]:.4f} ({task['dev_set']})"))
    facts += [("model bytes", f"{v['bytes'] / 1e6:.1f} MB ({v['bytes_without_word_embeddings'] / 1e6:.1f} MB without "
                              f"the word embeddings); {v['compression']:.2f}x smaller than "
                              f"{record['compression_reference']}"),
              ("speed", f"{v['sentences_per_s']:.0f} sentences/s at batch {record['config']['BATCH_SIZE']}, "
                        f"{v['latency_ms']:.1f} ms at batch 1; {v['throughput_ratio']:.2f}x dense PyTorch fp32, "
                        f"{v['vs_fastest_dense']:.2f}x the fastest dense deployment ({record['fastest_dense']})"),
              ("energy", f"{v['joules_per_1000']:.1f} J per 1,000 sentences ({record['energy_counter']})"
               if v.get("joules_per_1000") is not None else record["energy_counter"])]
    if v.get("chosen"):
        facts.append(("runtime choice", f"the faster runtime for {v['model']} {v['precision']} on this machine"))
    return facts


_OLD_TASK = {"name": "sst2", "title": "SST-2", "metrics": ["accuracy", "f1"], "headline": "accuracy", "dev_set": "validation"}


def record_task(record: dict) -> dict:
    """The task a compress.json record scored (name, title, metrics, headline, dev_set); records from
    before tasks: SST-2's accuracy and F1."""
    return record.get("task") or _OLD_TASK


def markdown(record: dict, results: schema.RunResults) -> str:
    """table.md from a compress.json record: a row per variant with the task's metrics on its dev set
    (the headline first, fractions or correlations), Δ headline vs dense in points (×100), MB = 10**6
    bytes on disk (model files; and without the word-embedding lookup), latency in ms, sentences/s, the
    ratios to dense PyTorch fp32 and to the fastest dense deployment, joules per 1,000 sentences (or "no
    energy counter"); then the runtime choice, the vocabulary trimming, mixed-precision and sparse notes."""
    def f(x, fmt):
        return "–" if x is None else format(x, fmt)
    task = record_task(record)
    titles = [METRIC_TITLES.get(m, m) for m in task["metrics"]]
    counter = record.get("energy_counter", energy.NO_COUNTER)
    no_counter = counter.startswith(energy.NO_COUNTER)
    lines = [f"Run `{record['run']}` ({results.trainer}, {results.config.granularity}); task {task['title']}, "
             f"scored by {METRIC_TITLES.get(task['headline'], task['headline'])} (`{task['headline']}`) on "
             f"{task['dev_set']}; dense reference: "
             f"{record['dense_run'] or 'untrained model of the same architecture (speed and bytes only)'}; "
             f"{record['threads']} threads, {record['date']}"
             + (f", {record['cpu']}" if record.get("cpu") else "") + ".", "",
             "| variant | runtime | " + " | ".join(f"dev {t}" for t in titles) + f" | Δ {titles[0]} vs dense "
             "| MB on disk | MB w/o word emb. | compression | bits/param | parameters | batch-1 latency ms "
             "| sentences/s @64 | × dense PyTorch | × fastest dense | J / 1k sentences | peak RSS MB |",
             "|---|---|" + "---|" * len(titles) + "---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for label, v in record["variants"].items():
        delta = v.get("headline_vs_dense", v.get("accuracy_vs_dense"))
        without = v.get("bytes_without_word_embeddings")
        joules = "no energy counter" if no_counter else f(v.get("joules_per_1000"), ".1f")
        fastest = v.get("vs_fastest_dense")
        lines.append(f"| {label} | {v['runtime']}{' ◆' if v.get('chosen') else ''} | "
                     + " | ".join(f(v.get(m), ".4f") for m in task["metrics"])
                     + f" | {'–' if delta is None else f'{100 * delta:+.2f}'} | {v['bytes'] / 1e6:.1f} | "
                     f"{'–' if without is None else f'{without / 1e6:.1f}'} | "
                     f"{v['compression']:.2f}× | {v['bits_per_parameter']:.2f} | {v['parameters']:,} | "
                     f"{v['latency_ms']:.1f} | {v['sentences_per_s']:.0f} | {v['throughput_ratio']:.2f}× | "
                     f"{'–' if fastest is None else f'{fastest:.2f}×'} | {joules} | "
                     f"{f(v.get('peak_rss_mb'), '.0f')} |")
    if record.get("fastest_dense"):
        lines += ["", f"Fastest dense deployment in this sitting: {record['fastest_dense']} "
                      f"({record['variants'][record['fastest_dense']]['sentences_per_s']:.0f} sentences/s); "
                      f"compression is against {record.get('compression_reference', 'dense · ORT fp32')}. "
                      f"Energy: {counter}."]
    choice = record.get("runtime_choice")
    if choice:
        lines += ["", "Runtime chosen (◆, --runtime=auto: the faster at batch 64 in this sitting): " + "; ".join(
            f"{key} → {c['runtime']} (" + " vs ".join(f"{r} {s:.0f}" for r, s in c["sentences_per_s"].items()) + ")"
            for key, c in choice.items()) + "."]
    trim = record.get("trim_vocab")
    if trim:
        lines += ["", f"+trim: the word embeddings cut to the {trim['kept_tokens']:,} of {trim['vocabulary']:,} "
                      "token ids that the training split and the special tokens use; a remap table in the model "
                      "sends every other id to the unknown token."]
    mixed = record.get("mixed")
    if mixed:
        lines += ["", f"Mixed precision: importance from the {mixed['importance']} criterion"
                      f"{' REVERSED (the most important matrices at 4 bits)' if mixed['reversed'] else ''} "
                      f"({mixed['calibration_batches']} training batches); "
                      f"{100 * mixed['four_bit_fraction']:.0f}% of the encoder's matrix weights at 4 bits "
                      f"(average {mixed['average_encoder_bits']:.2f} bits), embeddings at {mixed['embedding_bits']} "
                      f"bits, 4-bit blocks of {mixed['block_size']}."]
    ov_int8 = record.get("openvino_int8")
    if ov_int8 and ov_int8.get("fake_quantize_ops"):
        lines += ["", f"OpenVINO int8: NNCF post-training quantization, preset {ov_int8['preset']}, model type "
                      f"{ov_int8['model_type']}, {ov_int8['calibration_sentences']} training sentences."]
    return "\n".join(lines) + "\n"


def plots(record: dict, out: Path) -> None:
    """The headline metric (×100) against MB on disk and against sentences/s, to accuracy_vs_bytes.png and
    accuracy_vs_speed.png in `out`: the Pareto view, dense marked with a star."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    task = record_task(record)
    headline, title = task["headline"], METRIC_TITLES.get(task["headline"], task["headline"])
    points = {k: v for k, v in record["variants"].items() if v.get(headline) is not None}
    dense_score = record["variants"]["dense · PyTorch fp32"].get(headline)
    for key, xlabel, filename, scale in (("bytes", "MB on disk", "accuracy_vs_bytes.png", 1e-6),
                                         ("sentences_per_s", f"dev sentences/s at batch 64 ({record['threads']} threads)",
                                          "accuracy_vs_speed.png", 1)):
        fig, ax = plt.subplots(figsize=(9, 4.5))
        for i, (label, v) in enumerate(points.items()):
            dense = label.startswith("dense")
            ax.scatter(v[key] * scale, 100 * v[headline], label=label, s=170 if dense else 60, zorder=3,
                       marker="*" if dense else "osD^vP"[i % 6], alpha=0.85)
        if dense_score is not None:
            ax.axhline(100 * dense_score - 1.5, color="grey", linestyle=":", linewidth=1)
            ax.annotate("dense − 1.5 points", (ax.get_xlim()[0], 100 * dense_score - 1.5), fontsize=7,
                        color="grey", xytext=(4, 3), textcoords="offset points")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{task['title']} dev {title} (×100)")
        ax.set_title(f"{Path(record['run']).name}: {title} vs {'size' if key == 'bytes' else 'speed'} (★ dense)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = [f"--run={argv[0]}"] + argv[1:]
    try:
        main(experiment.configure(globals(), argv))
    except (settings.ConfigError, loading.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except runtimes.DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
