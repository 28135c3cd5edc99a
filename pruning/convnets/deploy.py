"""compress.py for resnet.py / mlp.py runs: the pruned model exported to ONNX, run by ONNX Runtime (fp32; int8 by
static quantization, QDQ, per-channel weights, calibrated on training examples; for mlp.py runs also `mixed`, the
importance-driven 8/4-bit precision of the text path) and OpenVINO (fp32; int8 by NNCF post-training quantization on
the same examples), each evaluated on the run's dev set from its files and timed side by side with the run's PyTorch
model and a dense reference.

The dense reference is the model of DENSE, a finished dense run of the same script, architecture and data (`check`),
exported and quantized to int8 in both runtimes as the pruned model is: what a user would deploy instead, so every
row's "× fastest dense" is its examples/s over the faster dense int8 deployment at batch BATCH_SIZE in this sitting
(`compare`). Without DENSE, the reference is an untrained model of the run's architecture in PyTorch, for speed only
(its accuracy is not reported). Writes RUN/compressed/<variant>/ (the model files), compress.json and table.md;
everything is made in RUN/compressed.work and moved into place when all of it succeeded.

Mixed precision (`mixed_plan`): the criterion IMPORTANCE (the run's by default) scores each hidden Linear's live
neurons (`pruning.convnets.criteria`); a layer's importance is their mean; `pruning.deploy.precision.assign_bits`
gives the least important layers 4 bits until FOUR_BIT_FRACTION of the hidden weights are at 4 bits (ONNX Runtime
MatMulNBits, asymmetric blocks of BLOCK_SIZE input columns), the rest and the classifier int8. ONNX Runtime has no
4-bit convolution, nor OpenVINO (NNCF 3.4's `compress_weights` INT4 leaves convolutions at int8: checked on a
two-conv model), so resnet.py runs are refused `mixed` when it is asked for (`check`).
"""
from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pruning.convnets import data as data_io
from pruning.convnets.criteria import CHANNEL_CRITERIA
from pruning.convnets.experiment import build_model
from pruning.convnets.models import MODEL_FILE, load_model
from pruning.convnets.units import ChannelUnits
from pruning.deploy import runtimes
from pruning.deploy.precision import assign_bits, average_bits
from pruning.run import schema
from pruning.settings import ConfigError

SCRIPTS = ("resnet.py", "mlp.py")
# The settings that fix a run's architecture and its dev set: a --dense run must have the same ones.
ARCHITECTURE = {"resnet.py": ("MODEL", "WIDTH", "STEM", "DATA", "DATA_DIR", "IMAGE_SIZE"),
                "mlp.py": ("HIDDEN", "DATA", "DATA_FILE", "LABEL_COLUMN")}
KNOWN_VARIANTS = ("int8", "mixed", "sparse", "mixed+qat")  # compress.py's VARIANTS


def is_convnet_run(run: str) -> bool:
    """Whether `run` is a finished run of resnet.py or mlp.py (its results.json says so)."""
    try:
        return json.loads((Path(run) / "results.json").read_text()).get("script") in SCRIPTS
    except (OSError, ValueError, AttributeError):
        return False


class _Logits(torch.nn.Module):
    def __init__(self, model, key):
        super().__init__()
        self.model, self.key = model, key

    def forward(self, x):
        return self.model(**{self.key: x}).logits


# --- what can be wrong, before any work -------------------------------------------------------------
def read_run(path: Path, what: str) -> schema.RunResults:
    """A finished run's results.json (`pruning.run.schema.read`); a file that cannot be read is a ConfigError
    naming `what` (the setting that named the run)."""
    try:
        return schema.read(path)
    except schema.SchemaError as e:
        raise ConfigError(f"{what}: {e}") from None


def check(config: dict, variants_named: bool = True) -> tuple[schema.RunResults, list[str], schema.RunResults | None]:
    """Everything that can be wrong with the input of a resnet.py / mlp.py compression, before any data or model
    is read: RUN, VARIANTS, the mixed-precision settings and DENSE (`check_dense`). Returns (the run's results, the
    extra variants to make beside fp32 and int8, which are always made: [] or ["mixed"], the dense run's results or
    None). `variants_named`: whether VARIANTS was given on the command line; a default variant that does not apply
    (sparse: the channels are removed, not zeroed; mixed on a resnet.py run) is skipped with a printed line, a
    named one that cannot be made is refused. Raises ConfigError naming the setting and what to use instead."""
    run = Path(config["RUN"])
    results = read_run(run, "--run")
    variants = [v for v in config["VARIANTS"].split(",") if v]
    unknown = [v for v in variants if v not in KNOWN_VARIANTS]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)} in --variants; choose from "
                          f"{', '.join(KNOWN_VARIANTS)} (fp32 is always made)")
    if "mixed+qat" in variants:
        raise ConfigError(f"--variants=mixed+qat: quantization-aware fine-tuning is wired for text runs only; leave "
                          f"it out of --variants for a {results.script} run (int8, and mixed for mlp.py, are made)")
    extra = []
    if "sparse" in variants:
        print(f"sparse: skipped, a {results.script} model has its pruned channels removed, not zeroed")
    if "mixed" in variants:
        if results.script == "resnet.py":
            import onnxruntime
            why = (f"ONNX Runtime {onnxruntime.__version__} has 4-bit weights (MatMulNBits) for MatMul and embedding "
                   "lookups only, no 4-bit convolution (nor has OpenVINO's weight compression, NNCF 3.4: its INT4 "
                   "takes MatMul and embeddings, convolutions stay int8), and a resnet.py model is convolutions")
            if variants_named:
                raise ConfigError(f"--variants=mixed: {why}; leave mixed out of --variants (fp32 and int8 are made "
                                  "in both runtimes), or use it on an mlp.py run (Linear layers)")
            print(f"mixed: skipped, {why}")
        else:
            extra.append("mixed")
    if extra:
        check_mixed_settings(config)
    for key in ("THREADS", "BATCH_SIZE", "LATENCY_SENTENCES", "ROUNDS", "CALIBRATION_BATCHES", "CALIBRATION_SENTENCES"):
        if config[key] < 1:
            raise ConfigError(f"--{key.lower()}={config[key]}: must be at least 1")
    dense = check_dense(config["DENSE"], results) if config["DENSE"] else None
    return results, extra, dense


def check_mixed_settings(config: dict) -> None:
    """FOUR_BIT_FRACTION in [0, 1], IMPORTANCE "run" or a channel criterion, and BLOCK_SIZE one that ONNX
    Runtime's 4-bit quantizer and kernels take (asked of the runtime: `runtimes.four_bit_block_size_taken`;
    onnxruntime 1.32: 16 to 256). Raises ConfigError."""
    if not 0 <= config["FOUR_BIT_FRACTION"] <= 1:
        raise ConfigError(f"--four_bit_fraction={config['FOUR_BIT_FRACTION']}: must be in [0, 1]")
    if config["IMPORTANCE"] != "run" and config["IMPORTANCE"] not in CHANNEL_CRITERIA:
        raise ConfigError(f"--importance={config['IMPORTANCE']}: for an mlp.py run choose run or one of "
                          f"{', '.join(CHANNEL_CRITERIA)} (criteria on neurons)")
    size = config["BLOCK_SIZE"]
    if size < 1 or not runtimes.four_bit_block_size_taken(size):
        import onnxruntime
        raise ConfigError(f"--block_size={size}: ONNX Runtime {onnxruntime.__version__}'s 4-bit quantizer takes blocks "
                          f"of {', '.join(map(str, runtimes.four_bit_block_sizes()))} input columns; choose one of "
                          "those (or leave mixed out of --variants)")


def check_dense(dense_dir: str, results: schema.RunResults) -> schema.RunResults:
    """The dense reference DENSE: a finished dense run (trainer "dense") of the run's script with the same
    architecture and data settings (`ARCHITECTURE`: the same model shape before pruning, the same dev set).
    Returns its results. Raises ConfigError naming what differs and what to give instead."""
    dense = Path(dense_dir)
    if not (dense / "results.json").exists() or not (dense / "model" / MODEL_FILE).exists():
        raise ConfigError(f"--dense={dense} is not a finished run of {results.script} (no results.json and "
                          f"model/{MODEL_FILE})")
    d = read_run(dense, "--dense")
    keys = ARCHITECTURE[results.script]
    mine, theirs = results.config.settings, d.config.settings
    differ = [k for k in keys if mine.get(k) != theirs.get(k)] if d.script == results.script else []
    if d.script != results.script or d.trainer != "dense" or differ:
        what = "".join(f", {k.lower()}={theirs.get(k)!r} (this run: {mine.get(k)!r})" for k in differ)
        raise ConfigError(f"--dense={dense} is a {d.trainer} run of {d.script}{what}; it must be a dense run "
                          f"(--trainer=dense) of {results.script} with this run's architecture and data ("
                          + ", ".join(f"--{k.lower()}={mine.get(k)}" for k in keys) + ")")
    return d


# --- the models and the data ---------------------------------------------------------------------------
def run_data(settings: dict, script: str):
    """The run's data as its script read it (`pruning.convnets.data`)."""
    if script == "resnet.py":
        return data_io.load_images(settings["DATA"], settings["DATA_DIR"], settings["IMAGE_SIZE"], settings["SEED"])
    return data_io.load_tabular(settings["DATA"], settings["DATA_FILE"], settings["LABEL_COLUMN"])


def dense_model(settings: dict, script: str, data):
    """An untrained dense model of the run's architecture (the checkout's `script` constants, the run's settings)."""
    import runpy
    namespace = runpy.run_path(str(Path(__file__).resolve().parents[2] / script))  # the checkout's script
    config = {**{k: v for k, v in namespace.items() if k.isupper()}, **{k: v for k, v in settings.items() if k != "TRAINER"}}
    return build_model(config, data, "image" if script == "resnet.py" else "tabular").eval()


def export(model, key: str, example: np.ndarray, path: Path) -> None:
    """`model`'s logits as an fp32 ONNX file at `path` (input `key`, a dynamic batch axis)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(_Logits(model, key).eval(), (torch.from_numpy(example),), str(path), input_names=[key],
                      output_names=["logits"], dynamic_axes={key: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)


def ort_int8(fp32: Path, path: Path, key: str, calib: list[np.ndarray]) -> None:
    """ONNX Runtime static int8 (QDQ, per-channel int8 weights, uint8 activations calibrated on `calib`) of the
    ONNX file `fp32`, written to `path`."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quant_pre_process, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({key: c} for c in calib)

        def get_next(self):
            return next(self.it, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as t:
        pre = Path(t) / "pre.onnx"
        quant_pre_process(str(fp32), str(pre))
        quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def openvino_pair(fp32: Path, calib: list[np.ndarray], fp32_dir: Path | None, int8_dir: Path) -> None:
    """OpenVINO IR of the ONNX file `fp32` (into `fp32_dir`, unless None) and its NNCF int8 (into `int8_dir`),
    calibrated on `calib`; each directory gets model.xml + model.bin."""
    import nncf
    import openvino as ov
    ov_fp32 = ov.convert_model(str(fp32))
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(calib), subset_size=len(calib))
    for directory, m in ((fp32_dir, ov_fp32), (int8_dir, ov_int8)):
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            ov.save_model(m, str(directory / "model.xml"), compress_to_fp16=False)


def calibration_batches(data, key: str, n: int, seed: int) -> list[dict]:
    """`n` batches of 32 un-augmented training examples (seeded; never the dev set): {key, "labels"} tensors."""
    rng = np.random.RandomState(seed)
    idx = rng.choice(len(data.train), min(len(data.train), 32 * n), replace=False)
    items = [data.train[int(i)] for i in idx]
    return [{key: torch.stack([x[key] for x in items[i:i + 32]]),
             "labels": torch.tensor([int(x["labels"]) for x in items[i:i + 32]])} for i in range(0, len(items), 32)]


def layer_importance(model: nn.Module, example: dict, name: str, options: dict, batches=(), seed: int = 0) -> dict[str, float]:
    """Mean score of each hidden Linear's live output neurons under the channel criterion `name`
    (`pruning.convnets.criteria.CHANNEL_CRITERIA`; its `options` by constructor argument), by module name; the
    classifier is no unit and is not scored. A copy of `model` is scored, so its weights, BatchNorm statistics
    and gradients stay as they were. A criterion that ranks what it observes is shown `batches` (training data,
    {input, "labels"}): gradient and undecayed read each batch's gradient in eval mode, activation its training-
    mode forward (dropout from a generator seeded with `seed`). Raises what the criterion raises (RuntimeError
    without batches to observe)."""
    scored = copy.deepcopy(model)
    units = ChannelUnits(scored, example)
    cls = CHANNEL_CRITERIA[name]
    accepted = inspect.signature(cls.__init__).parameters
    criterion = cls(units, **{k: v for k, v in options.items() if k in accepted})
    try:
        if criterion.observes:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for batch in batches:
                    scored.zero_grad(set_to_none=True)
                    if name == "activation":
                        scored.train()
                        scored(**batch)
                    else:
                        scored.eval()
                        scored(**batch).loss.backward()
                    criterion.on_gradients()
                    criterion.observe()
                    criterion.after_step()
        scores = criterion.scores()
    finally:
        criterion.close()
    return {m.name: float(scores[n].float().mean()) for n, g in units.groups.items()
            for m in g.producers if isinstance(m.module, nn.Linear)}


def mixed_plan(config: dict, results: schema.RunResults, model: nn.Module, data, key: str) -> dict:
    """Which hidden Linears of an mlp.py model get 4 bits in the mixed variant, decided from the PyTorch model before
    anything is written: `layer_importance` under IMPORTANCE ("run": the run's criterion; a dense run's: gradient),
    on CALIBRATION_BATCHES batches of the training split when the criterion observes; `assign_bits` gives the least
    important layers (the most, with REVERSE_IMPORTANCE) 4 bits until FOUR_BIT_FRACTION of their weights are at 4
    bits. Returns compress.json's "mixed" record (importance, bits, sizes by module name; the fraction and average
    bits reached; BLOCK_SIZE)."""
    name = results.trainer if config["IMPORTANCE"] == "run" else config["IMPORTANCE"]
    if name not in CHANNEL_CRITERIA:  # a dense run has no criterion
        name = "gradient"
    settings = results.config.settings
    options = {p: settings[f"{name}_{p}".upper()] for p in list(inspect.signature(CHANNEL_CRITERIA[name].__init__).parameters)[2:]
               if f"{name}_{p}".upper() in settings}
    batches = calibration_batches(data, key, config["CALIBRATION_BATCHES"], results.config.seed + 1) \
        if CHANNEL_CRITERIA[name].observes else []
    example = {key: batches[0][key][:2]} if batches else {key: torch.stack([data.dev[i][key] for i in range(2)])}
    importance = layer_importance(model, example, name, options, batches, seed=results.config.seed)
    sizes = {n: model.get_submodule(n).weight.numel() for n in importance}
    ranking = {n: -v for n, v in importance.items()} if config["REVERSE_IMPORTANCE"] else importance
    bits = assign_bits(ranking, sizes, config["FOUR_BIT_FRACTION"])
    return {"importance": name, "reversed": config["REVERSE_IMPORTANCE"], "importance_options": options,
            "calibration_batches": len(batches), "matrix_importance": importance, "bits": bits, "sizes": sizes,
            "four_bit_fraction": sum(sizes[n] for n in bits if bits[n] == 4) / sum(sizes.values()),
            "average_bits": average_bits(bits, sizes), "block_size": config["BLOCK_SIZE"]}


def write_mixed(fp32: Path, directory: Path, model: nn.Module, plan: dict) -> None:
    """The mixed variant of the ONNX file `fp32` into `directory`/model.onnx: every Gemm written as MatMul + Add
    under its own name first (`runtimes.gemm_as_matmul`: the 4-bit quantizer takes MatMul only, and ONNX Runtime's
    int8 quantizer would rename a Gemm it rewrites itself, so that a list of node names no longer found it), then
    the plan's 4-bit Linears MatMulNBits and every other MatMul (the 8-bit layers, the classifier) int8
    (`runtimes.quantize_mixed`, which checks both). Raises DeployError as those do."""
    import onnx
    graph = onnx.load(str(fp32))
    bits = plan["bits"]
    nodes = runtimes.linear_initializers(graph, {n: model.get_submodule(n).weight.detach().numpy() for n in bits})
    four = [nodes[n][0] for n, b in bits.items() if b == 4]
    graph = runtimes.gemm_as_matmul(graph, [n.name for n in graph.graph.node if n.op_type == "Gemm"])
    eight = [n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name not in four]
    directory.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as t:
        onnx.save(graph, str(Path(t) / runtimes.ONNX_FILE))
        runtimes.quantize_mixed(Path(t), directory, four, eight, plan["block_size"])


# --- measuring -------------------------------------------------------------------------------------
def compare(record: dict) -> None:
    """Each row against the fastest dense deployment of this sitting at batch BATCH_SIZE: the faster of the dense
    int8 rows (ONNX Runtime, OpenVINO) when DENSE made them, else the fastest dense row there is (the untrained
    PyTorch model). Sets record["fastest_dense"] (its label) and each row's "vs_fastest_dense": its examples/s over
    that row's (medians over the rounds). Raises ValueError for a record without a dense row."""
    variants = record["variants"]
    dense = {k: v for k, v in variants.items() if v["model"] == "dense"}
    if not dense:
        raise ValueError("the record has no dense row to compare against")
    pool = {k: v for k, v in dense.items() if v["precision"] == "int8"} or dense
    fastest = max(pool, key=lambda k: pool[k]["examples_per_s"])
    record["fastest_dense"] = fastest
    for v in variants.values():
        v["vs_fastest_dense"] = v["examples_per_s"] / variants[fastest]["examples_per_s"]


def markdown(record: dict) -> str:
    """table.md from a compress.json record: a row per variant (dense rows first) with its model, runtime, dev
    accuracy (– for an untrained dense model), MB on disk (10**6 bytes of its model files; – for PyTorch),
    examples/s at batch 1 and at BATCH_SIZE, the ratios to the PyTorch pruned model (medians of per-round ratios)
    and to the fastest dense deployment; then which row that was and what the dense reference is."""
    b = record["batch_size"]
    dense = (f"the dense run {record['dense_run']}, deployed like the pruned model" if record["dense_run"] else
             "an untrained model of the same architecture: the dense rows are untrained, for speed only (no "
             "accuracy); give --dense=<a finished dense run of the same script> for trained dense deployments")
    lines = [f"Run `{record['run']}` ({record['script']}); dense reference: {dense}; {record['threads']} threads, "
             f"{record['rounds']} rounds (medians), {record['date']}.", "",
             f"| variant | model | runtime | precision | dev accuracy | MB on disk | examples/s batch 1 "
             f"| examples/s batch {b} | × PyTorch pruned (1 / {b}) | × fastest dense |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in record["variants"].items():
        acc = "–" if v["accuracy"] is None else f"{v['accuracy']:.4f}"
        size = "–" if v["bytes"] is None else f"{v['bytes'] / 1e6:.3f}"
        fastest = v.get("vs_fastest_dense")
        lines.append(f"| {name} | {v['model']} | {v['runtime']} | {v['precision']} | {acc} | {size} | "
                     f"{v['batch1_per_s']:.0f} | {v['examples_per_s']:.0f} | {v['batch1_ratio_to_pytorch_pruned']:.2f} / "
                     f"{v['ratio_to_pytorch_pruned']:.2f} | {'–' if fastest is None else f'{fastest:.2f}×'} |")
    if record.get("fastest_dense"):
        f = record["fastest_dense"]
        lines += ["", f"× fastest dense: examples/s at batch {b} over {f}'s ({record['variants'][f]['examples_per_s']:.0f}"
                      f"; {'the faster dense int8 deployment' if record['variants'][f]['precision'] == 'int8' else 'untrained, speed only'}"
                      " in this sitting)."]
    mixed = record.get("mixed")
    if mixed:
        lines += ["", f"Mixed precision: importance from the {mixed['importance']} criterion"
                      f"{' REVERSED (the most important layers at 4 bits)' if mixed['reversed'] else ''}; "
                      f"{100 * mixed['four_bit_fraction']:.0f}% of the hidden layers' weights at 4 bits (average "
                      f"{mixed['average_bits']:.2f} bits, blocks of {mixed['block_size']}), the rest and the classifier int8."]
    return "\n".join(lines) + "\n"


def time_rows(rows: dict, dev_x: np.ndarray, batch: int, latency_examples: int, rounds: int) -> dict:
    """Examples/s at batch 1 (over the first `latency_examples` dev examples) and at `batch` (the whole dev set) of
    every row's runner, the rows taking turns in each of `rounds`: per row, the lists over the rounds."""
    singles = [dev_x[i:i + 1] for i in range(min(latency_examples, len(dev_x)))]
    out = {name: {"batch1": [], "batch": []} for name in rows}
    with torch.no_grad():
        for _ in range(rounds):
            for name, row in rows.items():
                fn = row["run"]
                fn(singles[0])
                start = time.perf_counter()
                for s in singles:
                    fn(s)
                out[name]["batch1"].append(len(singles) / (time.perf_counter() - start))
                start = time.perf_counter()
                for i in range(0, len(dev_x), batch):
                    fn(dev_x[i:i + batch])
                out[name]["batch"].append(len(dev_x) / (time.perf_counter() - start))
    return out


def compress(config: dict, variants_named: bool = True) -> dict:
    """Make, evaluate and time the variants of the run config["RUN"] (`check` first: ConfigError before any work);
    returns the record written to compress.json."""
    results, extra, dense_results = check(config, variants_named)
    import onnxruntime as ort
    import openvino as ov
    run = Path(config["RUN"])
    settings = results.config.settings
    data = run_data(settings, results.script)
    model = load_model(str(run / "model"))
    key = "pixel_values" if results.script == "resnet.py" else "features"
    threads, batch = config["THREADS"], config["BATCH_SIZE"]
    torch.set_num_threads(threads)
    if isinstance(data.train, data_io.ImageSet):
        data.train.train = False  # calibrate and score on un-augmented examples
    plan = mixed_plan(config, results, model, data, key) if "mixed" in extra else None
    dev_x = torch.stack([data.dev[i][key] for i in range(len(data.dev))]).numpy()
    dev_y = np.asarray([int(data.dev[i]["labels"]) for i in range(len(data.dev))])
    rng = np.random.RandomState(0)
    calib_idx = rng.choice(len(data.train), min(len(data.train), config["CALIBRATION_SENTENCES"]), replace=False)
    calib = [data.train[int(i)][key].numpy()[None] for i in calib_idx]
    trained_dense = dense_results is not None
    dense = load_model(str(Path(config["DENSE"]) / "model")) if trained_dense else dense_model(settings, results.script, data)
    out = Path(config["OUT_DIR"]) if config["OUT_DIR"] else run / "compressed"
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)

    fp32 = work / "onnxruntime-fp32" / runtimes.ONNX_FILE
    export(model, key, dev_x[:2], fp32)
    ort_int8(fp32, work / "onnxruntime-int8" / runtimes.ONNX_FILE, key, calib)
    openvino_pair(fp32, calib, work / "openvino-fp32", work / "openvino-int8")
    if plan is not None:
        write_mixed(fp32, work / "onnxruntime-mixed", model, plan)
    if trained_dense:  # the dense model deployed as the pruned one is; its fp32 export only as their source
        with tempfile.TemporaryDirectory() as t:
            dense_fp32 = Path(t) / runtimes.ONNX_FILE
            export(dense, key, dev_x[:2], dense_fp32)
            ort_int8(dense_fp32, work / "dense-onnxruntime-int8" / runtimes.ONNX_FILE, key, calib)
            openvino_pair(dense_fp32, calib, None, work / "dense-openvino-int8")

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    core = ov.Core()

    def torch_runner(m):
        return lambda x: _Logits(m, key)(torch.from_numpy(x)).detach().numpy()

    def ort_runner(name):
        session = ort.InferenceSession(str(work / name / runtimes.ONNX_FILE), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {key: x})[0]

    def ov_runner(name):
        compiled = core.compile_model(str(work / name / "model.xml"), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        return lambda x: compiled(x)[0]

    def row(which, runtime, precision, fn):
        return {"model": which, "runtime": runtime, "precision": precision, "run": fn}
    rows = {("pytorch-dense" if trained_dense else "pytorch-dense (untrained)"): row("dense", "PyTorch", "fp32", torch_runner(dense))}
    if trained_dense:
        rows["dense-onnxruntime-int8"] = row("dense", "ONNX Runtime", "int8", ort_runner("dense-onnxruntime-int8"))
        rows["dense-openvino-int8"] = row("dense", "OpenVINO", "int8", ov_runner("dense-openvino-int8"))
    rows["pytorch-pruned"] = row("pruned", "PyTorch", "fp32", torch_runner(model))
    for precision in ("fp32", "int8", *extra):
        rows[f"onnxruntime-{precision}"] = row("pruned", "ONNX Runtime", precision, ort_runner(f"onnxruntime-{precision}"))
    for precision in ("fp32", "int8"):
        rows[f"openvino-{precision}"] = row("pruned", "OpenVINO", precision, ov_runner(f"openvino-{precision}"))

    record = {"run": str(run), "script": results.script, "dense_run": config["DENSE"] or None, "threads": threads,
              "rounds": config["ROUNDS"], "batch_size": batch, "date": time.strftime("%Y-%m-%d"),
              "dev_rows": len(dev_y), "variants": {}}
    if plan is not None:
        record["mixed"] = plan
    with torch.no_grad():
        for name, r in rows.items():
            logits = np.concatenate([r["run"](dev_x[i:i + batch]) for i in range(0, len(dev_x), batch)])
            files = sorted((work / name).glob("*")) if (work / name).is_dir() else []
            untrained = r["model"] == "dense" and not trained_dense
            record["variants"][name] = {
                "model": r["model"], "runtime": r["runtime"], "precision": r["precision"],
                "accuracy": None if untrained else float((logits.argmax(-1) == dev_y).mean()),
                "bytes": sum(f.stat().st_size for f in files) if files else None}
    speeds = time_rows(rows, dev_x, batch, config["LATENCY_SENTENCES"], config["ROUNDS"])
    base = speeds["pytorch-pruned"]
    for name, v in record["variants"].items():
        s = speeds[name]
        v.update(batch1_per_s=statistics.median(s["batch1"]), examples_per_s=statistics.median(s["batch"]),
                 batch1_ratio_to_pytorch_pruned=statistics.median(a / b for a, b in zip(s["batch1"], base["batch1"])),
                 ratio_to_pytorch_pruned=statistics.median(a / b for a, b in zip(s["batch"], base["batch"])),
                 rounds={"batch1": s["batch1"], "batch": s["batch"]})
    compare(record)
    table = markdown(record)
    (work / "table.md").write_text(table)
    schema.write_json(work / "compress.json", record)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    print("\n" + table + f"\nwritten: {out}/compress.json, table.md, one folder per variant")
    return record
