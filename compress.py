"""Compress a finished run for CPU deployment and measure what it buys: size, speed and its task's metrics.

    python compress.py runs/NAME                          # the variants below, into runs/NAME/compressed/
    python compress.py runs/NAME --dense=runs/DENSE_RUN   # dense reference rows with their accuracy
    python compress.py --help

Variants, each run by ONNX Runtime (the common CPU runtime for BERT-class models) and evaluated on the dev
set of the run's task (`pruning.data`, as the run tokenized it: pairs as pairs, segment ids exported) in a
fresh process from its files alone, with the task's metrics (`pruning.tasks`); every row names the headline:
- fp32:   the exported model (the baseline, as saved);
- int8:   dynamic quantization, int8 weights for every linear layer and the embeddings;
- mixed:  the run's criterion ranks the encoder's matrices; the least important FOUR_BIT_FRACTION of the
          weights get 4 bits (blocks of BLOCK_SIZE), the rest int8; embeddings at EMBEDDING_BITS;
- sparse: (unstructured runs) fp32 and int8 with mostly-zero tensors stored as bitmap + nonzero values;
- mixed+qat: (QAT_STEPS > 0) mixed after a quantization-aware fine-tune of the 4-bit matrices.
Beside them, in the same process and sitting: the run's model and a dense model in PyTorch fp32, and the
dense model in ONNX Runtime fp32. Writes compressed/compress.json, compressed/table.md and two plots.
"""
from __future__ import annotations

import copy
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import onnx
import torch
from torch.nn.utils import parametrize
from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding,
                          Trainer, TrainingArguments)

import bert  # noqa: F401  (defines the toolkit's trainers, which criteria() finds)
from pruning import data
from pruning import deploy, experiment, schema
from pruning.precision import FakeQuant4, assign_bits, average_bits, matrix_importance, prunable_linears
from pruning.layouts import layout_of
from pruning.results import parameter_split
from pruning.tasks import METRIC_TITLES

RUN = ""                     # a finished run's directory (also accepted as the first argument)
VARIANTS = "int8,mixed,sparse"  # beside fp32: any of int8, mixed, sparse (skipped for structured runs), mixed+qat
FOUR_BIT_FRACTION = 0.5      # mixed: at least this fraction of the encoder's matrix weights get 4 bits, least important first
EMBEDDING_BITS = 4           # mixed: 4 (block-quantized lookups) or 8; embeddings are half of MiniLM's parameters
IMPORTANCE = "run"           # mixed: "run" = the run's criterion (gradient for slimming/dense runs), or magnitude/gradient/undecayed
REVERSE_IMPORTANCE = False   # mixed: a control: the MOST important matrices get 4 bits
CALIBRATION_BATCHES = 8      # training-set batches (never dev) for gradient-based importance
BLOCK_SIZE = 32              # 4-bit weights: input columns per block (one scale and zero point each)
QAT_STEPS = 0                # mixed+qat: optimizer steps of quantization-aware fine-tuning (0 = no such variant)
QAT_LEARNING_RATE = 1e-5     # mixed+qat: AdamW learning rate (constant)
DENSE = ""                   # a finished dense run: its model is the dense reference; "" = the run's architecture, untrained (speed and bytes only)
THREADS = 2                  # intra-op threads of every runtime
BATCH_SIZE = 64              # sentences per batch for throughput and accuracy
LATENCY_SENTENCES = 100      # batch-1 latency: median over this many dev sentences
ROUNDS = 3                   # timing rounds; the variants take turns in each
OUT_DIR = ""                 # "" = RUN/compressed

_KNOWN_VARIANTS = ("int8", "mixed", "sparse", "mixed+qat")


def read_run(run: Path, what: str) -> schema.RunResults:
    """A finished run's results (`pruning.schema`); a file this code cannot read is a ConfigError."""
    try:
        return schema.read(run)
    except schema.SchemaError as e:
        raise experiment.ConfigError(f"{what}: {e}") from None


def check(config: dict) -> schema.RunResults:
    """Everything that can be wrong with the input, before any work; returns the run's results.json."""
    run = Path(config["RUN"]) if config["RUN"] else None
    if run is None:
        raise experiment.ConfigError("name the run to compress: python compress.py runs/NAME")
    if not (run / "results.json").exists() or not (run / "model" / "config.json").exists():
        raise experiment.ConfigError(f"{run} is not a finished run (no results.json and model/): wait for it to "
                                     "finish, or resume it with --resume=true --run_name=NAME")
    variants = [v for v in config["VARIANTS"].split(",") if v]
    unknown = [v for v in variants if v not in _KNOWN_VARIANTS]
    if unknown:
        raise experiment.ConfigError(f"unknown variant(s) {', '.join(unknown)} in --variants; choose from "
                                     f"{', '.join(_KNOWN_VARIANTS)} (fp32 is always made)")
    if "mixed+qat" in variants and config["QAT_STEPS"] <= 0:
        raise experiment.ConfigError("variant mixed+qat needs --qat_steps > 0")
    if config["QAT_STEPS"] < 0 or not config["QAT_LEARNING_RATE"] > 0:
        raise experiment.ConfigError(f"--qat_steps must be >= 0 and --qat_learning_rate > 0, got {config['QAT_STEPS']} "
                                     f"and {config['QAT_LEARNING_RATE']}")
    if not 0 <= config["FOUR_BIT_FRACTION"] <= 1:
        raise experiment.ConfigError(f"--four_bit_fraction={config['FOUR_BIT_FRACTION']}: must be in [0, 1]")
    if config["EMBEDDING_BITS"] not in (4, 8):
        raise experiment.ConfigError(f"--embedding_bits={config['EMBEDDING_BITS']}: must be 4 or 8")
    if config["BLOCK_SIZE"] < 16 or config["BLOCK_SIZE"] & (config["BLOCK_SIZE"] - 1):
        raise experiment.ConfigError(f"--block_size={config['BLOCK_SIZE']}: ONNX Runtime's 4-bit kernels take a "
                                     "power of two >= 16")
    importance = config["IMPORTANCE"]
    if importance != "run" and importance not in criteria():
        raise experiment.ConfigError(f"--importance={importance}: choose run or one of {', '.join(criteria())}")
    results = read_run(run, "--run")
    if config["DENSE"]:
        dense = Path(config["DENSE"])
        if not (dense / "results.json").exists() or not (dense / "model" / "config.json").exists():
            raise experiment.ConfigError(f"--dense={dense} is not a finished run (no results.json and model/)")
        d = read_run(dense, "--dense")
        if d.trainer != "dense" or d.model_source != results.model_source:
            raise experiment.ConfigError(f"--dense={dense} is a {d.trainer} run of {d.model_source}; it must be "
                                         f"a dense run of the same model ({results.model_source})")
    for key in ("THREADS", "BATCH_SIZE", "LATENCY_SENTENCES", "ROUNDS", "CALIBRATION_BATCHES"):
        if config[key] < 1:
            raise experiment.ConfigError(f"--{key.lower()}={config[key]}: must be at least 1")
    return results


def criteria() -> dict[str, type]:
    """Criteria that score single weights, by name (every PruningTrainer subclass the scripts define)."""
    return {name: cls.criterion_class for name, cls in experiment.trainers().items()
            if name != "dense" and "weights" in cls.criterion_class.granularities}


def importance_criterion(config: dict, results: schema.RunResults) -> tuple[str, type, dict]:
    """(name, class, options) of the criterion that ranks matrices, and the run's options for it."""
    known = criteria()
    name = results.trainer if config["IMPORTANCE"] == "run" else config["IMPORTANCE"]
    if name not in known:  # slimming's coefficients are folded away; a dense run has no criterion
        name = "gradient"
    options = experiment.criterion_options({**results.config.settings, "TRAINER": experiment.trainers()[name]})
    return name, known[name], options


def dense_reference(run_model, dense_dir: str, dense_layers: int | None = None):
    """The dense model to compare against: a dense run's, or the run's architecture with untrained weights
    (`dense_layers` encoder layers when whole layers were removed; None: the run model's count)."""
    if dense_dir:
        return AutoModelForSequenceClassification.from_pretrained(str(Path(dense_dir) / "model")).eval()
    settings = run_model.config.to_dict()
    for key in ("attention_heads_per_layer", "intermediate_size_per_layer", "kept_heads", "kept_layers", "auto_map",
                "architectures"):
        settings.pop(key, None)
    if dense_layers is not None and getattr(run_model.config, "kept_layers", None) is not None:
        settings.pop("layer_types", None)  # the family's default pattern for the dense layer count
        settings[layout_of(run_model).config_layers] = dense_layers
    kind = settings.pop("model_type").removeprefix("pruned_")
    return AutoModelForSequenceClassification.from_config(AutoConfig.for_model(kind, **settings)).eval()


def encode(rows, task, tokenizer, results: schema.RunResults):
    """`rows` of the run's task tokenized as the run tokenized them (pairs as pairs, its MAX_LENGTH and
    TRUNCATION): a `datasets.Dataset` (`pruning.data.tokenize`)."""
    return data.tokenize(data.DatasetDict(rows=rows), tokenizer, results.config.max_length, task,
                         results.config.settings.get("TRUNCATION") or "head")["rows"]


def calibration_batches(train, task, results: schema.RunResults, tokenizer, n: int):
    """`n` batches of 32 examples of the training split (seeded by the run's seed), never the dev set:
    padded tensors of the model's inputs (segment ids of a pair included) and labels."""
    features = data.model_rows(encode(data.subset(train, 32 * n, results.config.seed + 1), task, tokenizer, results))
    collate = DataCollatorWithPadding(tokenizer)
    return [collate(features[i:i + 32]) for i in range(0, len(features), 32)]


def bit_plan(graph, model, bits: dict[str, int], embedding_bits: int) -> tuple[list[str], list[str]]:
    """The exported graph's nodes to quantize at 4 and at 8 bits: the encoder's matrices as `bits` says, the
    embedding lookups at `embedding_bits`, the pooler and classifier (Gemm) at 8."""
    weights = {n: m.weight.detach().numpy() for n, m in prunable_linears(model).items()}
    nodes = deploy.linear_initializers(graph, weights)
    embeddings = deploy.embedding_gathers(graph)
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


def time_variants(runners: dict, batches, singles, rounds: int) -> dict:
    """Sentences/s at batch BATCH_SIZE (the whole dev set) and median batch-1 latency, the variants taking
    turns in each round. Each figure is the best of the rounds (noise on a shared machine only ever slows
    a round down), and its ratio is taken to the best of the dense PyTorch model's rounds."""
    sentences = sum(len(b["input_ids"]) for b in batches)
    per_round = {name: {"throughput": [], "latency": []} for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run(singles[0])  # warm-up
            started = time.perf_counter()
            for b in batches:
                run(b)
            per_round[name]["throughput"].append(sentences / (time.perf_counter() - started))
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
                   "rounds": per_round[name]}
            for name, (throughput, latency) in best.items()}


def main(config: dict) -> None:
    """Export, quantize and pack the run's model into each variant (`pruning.deploy`), evaluate and time them
    side by side, then write compress.json, table.md and the two plots to OUT_DIR (default RUN/compressed).
    Raises ConfigError (from `check`) for bad input, before any work."""
    results = check(config)
    run = Path(config["RUN"])
    out = Path(config["OUT_DIR"]) if config["OUT_DIR"] else run / "compressed"
    variants = [v for v in config["VARIANTS"].split(",") if v]
    torch.set_num_threads(config["THREADS"])
    structured = results.config.granularity != "weights"
    if structured and "sparse" in variants:
        print("sparse: skipped, a heads+neurons model has its pruned units removed, not zeroed")
        variants.remove("sparse")

    model = AutoModelForSequenceClassification.from_pretrained(str(run / "model"), trust_remote_code=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(run / "model"), trust_remote_code=True)  # no prompt for our config
    structure = results.pruning.structure
    dense = dense_reference(model, config["DENSE"], len(structure.heads_total_per_layer) if structure else None)
    task, datasets, _ = data.load(**data.run_task(results.config.settings))
    dev = encode(datasets[task.dev], task, tokenizer, results)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    work.mkdir(exist_ok=True)
    dev_file = work / "dev.npz"
    deploy.write_dev(dev_file, dev, deploy.model_inputs(model, dev.column_names), tokenizer.pad_token_id, task.metrics)
    batches, _ = deploy.dev_batches(dev_file, config["BATCH_SIZE"])
    singles = deploy.dev_batches(dev_file, 1)[0][:config["LATENCY_SENTENCES"]]
    probe = batches[0]

    def write_variant(name: str, make) -> Path:
        final = out / name
        tmp = deploy.fresh_tmp(final)
        extra = make(tmp)
        deploy.replace_directory(tmp, final)
        print(f"  {name}: {deploy.directory_bytes(final) / 1e6:.1f} MB")
        return extra

    record = {"run": str(run), "dense_run": config["DENSE"] or None, "config": config,
              "task": {"name": task.name, "title": task.title, "metrics": list(task.metrics), "headline": task.headline,
                       "dev_set": task.dev},
              "date": time.strftime("%Y-%m-%d %H:%M"), "threads": config["THREADS"], "variants": {}}
    print(f"exporting {run / 'model'} and the dense reference to ONNX ...")
    write_variant("fp32", lambda d: deploy.export_onnx(model, d, probe))
    write_variant("dense-fp32", lambda d: deploy.export_onnx(dense, d, probe))
    if "int8" in variants:
        write_variant("int8", lambda d: deploy.quantize_int8(out / "fp32", d))

    if "mixed" in variants or "mixed+qat" in variants:
        name, criterion, options = importance_criterion(config, results)
        needs_batches = name != "magnitude"
        calibration = (calibration_batches(datasets["train"], task, results, tokenizer, config["CALIBRATION_BATCHES"])
                       if needs_batches else ())
        importance = matrix_importance(model, criterion, options, calibration)
        linears = prunable_linears(model)
        sizes = {n: m.weight.numel() for n, m in linears.items()}
        ranking = {n: -v for n, v in importance.items()} if config["REVERSE_IMPORTANCE"] else importance
        bits = assign_bits(ranking, sizes, config["FOUR_BIT_FRACTION"])
        four, eight = bit_plan(onnx.load(str(out / "fp32" / deploy.ONNX_FILE)), model, bits, config["EMBEDDING_BITS"])
        record["mixed"] = {"importance": name, "reversed": config["REVERSE_IMPORTANCE"], "importance_options": options,
                           "calibration_batches": len(calibration),
                           "matrix_importance": importance, "bits": bits, "sizes": sizes,
                           "four_bit_fraction": sum(sizes[n] for n in bits if bits[n] == 4) / sum(sizes.values()),
                           "average_encoder_bits": average_bits(bits, sizes),
                           "embedding_bits": config["EMBEDDING_BITS"], "block_size": config["BLOCK_SIZE"]}
        reversed_text = " (reversed)" if config["REVERSE_IMPORTANCE"] else ""
        print(f"mixed precision: {name} importance{reversed_text}; {sum(b == 4 for b in bits.values())} of "
              f"{len(bits)} matrices at 4 bits ({100 * record['mixed']['four_bit_fraction']:.0f}% of their weights)")
        if "mixed" in variants:
            write_variant("mixed", lambda d: deploy.quantize_mixed(out / "fp32", d, four, eight, config["BLOCK_SIZE"]))
        if "mixed+qat" in variants:
            train = encode(data.subset(datasets["train"], 32 * config["QAT_STEPS"], results.config.seed + 2), task,
                           tokenizer, results)
            four_modules = [n for n, b in bits.items() if b == 4]
            student = qat_finetune(model, four_modules, train, config, tokenizer, results.config.seed, work)
            student_fp32 = work / "fp32+qat"  # staging only: the variant is its quantized form
            student_fp32.mkdir()
            deploy.export_onnx(student, student_fp32, probe)
            four_qat, eight_qat = bit_plan(onnx.load(str(student_fp32 / deploy.ONNX_FILE)), student, bits,
                                           config["EMBEDDING_BITS"])
            write_variant("mixed+qat", lambda d: deploy.quantize_mixed(student_fp32, d, four_qat, eight_qat,
                                                                       config["BLOCK_SIZE"]))
    if "sparse" in variants:
        for base in ("fp32", "int8") if "int8" in variants else ("fp32",):
            stats = write_variant(f"{base}+sparse", lambda d, b=base: deploy.pack_sparse(out / b, d))
            record.setdefault("sparse", {})[base] = stats

    # Accuracy and memory: each variant in a fresh process, from its files alone.
    rows = {"dense · PyTorch fp32": (Path(config["DENSE"]) / "model") if config["DENSE"] else None,
            "dense · ORT fp32": out / "dense-fp32",
            "pruned · PyTorch fp32": run / "model"}
    made = ["fp32"] + [v for v in variants if v != "sparse"] + (
        ["fp32+sparse"] + (["int8+sparse"] if "int8" in variants else []) if "sparse" in variants else [])
    for name in made:
        rows[f"pruned · ORT {name}"] = out / name
    dense_trained = bool(config["DENSE"])
    params = {"dense": parameter_split(dense), "pruned": parameter_split(model)}
    nonzero = {"dense": sum(int((p != 0).sum()) for p in dense.parameters()),
               "pruned": sum(int((p != 0).sum()) for p in model.parameters())}
    for label, directory in rows.items():
        which = label.split(" · ")[0]
        entry = {"runtime": "PyTorch" if "PyTorch" in label else "ONNX Runtime",
                 "parameters": params[which]["total"], "nonzero_parameters": nonzero[which],
                 "directory": str(directory) if directory else None}
        if directory is not None and (which == "pruned" or dense_trained):
            print(f"evaluating {label} in a fresh process ...")
            entry.update(deploy.evaluate_in_fresh_process(directory, dev_file, config["THREADS"], config["BATCH_SIZE"]))
        if directory is not None:
            files = [directory / "model.safetensors"] if "PyTorch" in label else None
            entry["bytes"] = sum(f.stat().st_size for f in files) if files else deploy.directory_bytes(directory)
        else:
            with tempfile.TemporaryDirectory() as t:
                dense.save_pretrained(t)
                entry["bytes"] = os.path.getsize(Path(t) / "model.safetensors")
        record["variants"][label] = entry

    # Speed: every variant in this process, taking turns on the same batches.
    print(f"timing {len(rows)} variants side by side ({config['ROUNDS']} rounds, {config['THREADS']} threads) ...")
    runners = {}
    for label, directory in rows.items():
        if label == "dense · PyTorch fp32":
            runners[label] = deploy.pytorch_runner(dense)
        elif label == "pruned · PyTorch fp32":
            runners[label] = deploy.pytorch_runner(model)
        else:
            runners[label] = deploy.runner(directory, config["THREADS"])
    for label, speed in time_variants(runners, batches, singles, config["ROUNDS"]).items():
        record["variants"][label].update(speed)

    reference_bytes = record["variants"]["dense · ORT fp32"]["bytes"]
    dense_score = record["variants"]["dense · PyTorch fp32"].get(task.headline)
    for entry in record["variants"].values():
        entry["compression"] = reference_bytes / entry["bytes"]
        entry["bits_per_parameter"] = 8 * entry["bytes"] / entry["parameters"]
        if dense_score is not None and entry.get(task.headline) is not None:
            entry["headline_vs_dense"] = entry[task.headline] - dense_score
    experiment.write_json(out / "compress.json", record)
    table = markdown(record, results)
    (out / "table.md").write_text(table)
    plots(record, out)
    print("\n" + table + f"\nwritten: {out}/compress.json, table.md, accuracy_vs_bytes.png, accuracy_vs_speed.png")
    shutil.rmtree(work)


OLD_TASK = {"name": "sst2", "title": "SST-2", "metrics": ["accuracy", "f1"], "headline": "accuracy", "dev_set": "validation"}


def record_task(record: dict) -> dict:
    """The task a compress.json record scored (name, title, metrics, headline, dev_set); records from
    before tasks: SST-2's accuracy and F1."""
    return record.get("task") or OLD_TASK


def markdown(record: dict, results: schema.RunResults) -> str:
    """table.md from a compress.json record: a row per variant with the task's metrics on its dev set
    (the headline first, fractions or correlations), Δ headline vs dense in points (×100), MB = 10**6
    bytes on disk, latency in ms, sentences/s; then the mixed-precision and sparse notes."""
    def f(x, fmt):
        return "–" if x is None else format(x, fmt)
    task = record_task(record)
    titles = [METRIC_TITLES.get(m, m) for m in task["metrics"]]
    lines = [f"Run `{record['run']}` ({results.trainer}, {results.config.granularity}); task {task['title']}, "
             f"scored by {METRIC_TITLES.get(task['headline'], task['headline'])} (`{task['headline']}`) on "
             f"{task['dev_set']}; dense reference: "
             f"{record['dense_run'] or 'untrained model of the same architecture (speed and bytes only)'}; "
             f"{record['threads']} threads, {record['date']}.", "",
             "| variant | runtime | " + " | ".join(f"dev {t}" for t in titles) + f" | Δ {titles[0]} vs dense "
             "| MB on disk | compression | bits/param | parameters | batch-1 latency ms | sentences/s @64 "
             "| × dense PyTorch | peak RSS MB |",
             "|---|---|" + "---|" * len(titles) + "---|---|---|---|---|---|---|---|---|"]
    for label, v in record["variants"].items():
        delta = v.get("headline_vs_dense", v.get("accuracy_vs_dense"))
        lines.append(f"| {label} | {v['runtime']} | " + " | ".join(f(v.get(m), ".4f") for m in task["metrics"])
                     + f" | {'–' if delta is None else f'{100 * delta:+.2f}'} | {v['bytes'] / 1e6:.1f} | "
                     f"{v['compression']:.2f}× | {v['bits_per_parameter']:.2f} | {v['parameters']:,} | "
                     f"{v['latency_ms']:.1f} | {v['sentences_per_s']:.0f} | {v['throughput_ratio']:.2f}× | "
                     f"{f(v.get('peak_rss_mb'), '.0f')} |")
    mixed = record.get("mixed")
    if mixed:
        lines += ["", f"Mixed precision: importance from the {mixed['importance']} criterion"
                      f"{' REVERSED (the most important matrices at 4 bits)' if mixed['reversed'] else ''} "
                      f"({mixed['calibration_batches']} training batches); "
                      f"{100 * mixed['four_bit_fraction']:.0f}% of the encoder's matrix weights at 4 bits "
                      f"(average {mixed['average_encoder_bits']:.2f} bits), embeddings at {mixed['embedding_bits']} "
                      f"bits, 4-bit blocks of {mixed['block_size']}."]
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
    except (experiment.ConfigError, data.DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except deploy.DeployError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
