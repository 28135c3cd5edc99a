"""compress.py for resnet.py / mlp.py runs: the pruned model exported to ONNX, run by ONNX Runtime (fp32; int8 by
static quantization, QDQ, per-channel weights, calibrated on training examples) and OpenVINO (fp32; int8 by NNCF
post-training quantization on the same examples), each evaluated on the run's dev set from its files and timed
side by side with the run's PyTorch model and an untrained dense model of the same architecture (speed only).
Writes RUN/compressed/<runtime>-<precision>/ (the model files), compress.json and table.md."""
from __future__ import annotations

import json
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from pruning.convnets import data as data_io
from pruning.convnets.experiment import build_model
from pruning.convnets.models import load_model
from pruning.run import schema

SCRIPTS = ("resnet.py", "mlp.py")


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


def run_data(settings: dict, script: str):
    if script == "resnet.py":
        return data_io.load_images(settings["DATA"], settings["DATA_DIR"], settings["IMAGE_SIZE"], settings["SEED"])
    return data_io.load_tabular(settings["DATA"], settings["DATA_FILE"], settings["LABEL_COLUMN"])


def dense_model(settings: dict, script: str, data):
    import runpy
    namespace = runpy.run_path(str(Path(__file__).resolve().parents[2] / script))  # the checkout's script
    config = {**{k: v for k, v in namespace.items() if k.isupper()}, **{k: v for k, v in settings.items() if k != "TRAINER"}}
    return build_model(config, data, "image" if script == "resnet.py" else "tabular").eval()


def compress(config: dict) -> dict:
    """Make, evaluate and time the variants of the run config["RUN"]; returns the record written to compress.json."""
    import onnxruntime as ort
    import openvino as ov
    import nncf
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)
    run = Path(config["RUN"])
    results = schema.read(run)
    settings = results.config.settings
    data = run_data(settings, results.script)
    model = load_model(str(run / "model"))
    key = "pixel_values" if results.script == "resnet.py" else "features"
    threads = config["THREADS"]
    torch.set_num_threads(threads)
    dev_x = torch.stack([data.dev[i][key] for i in range(len(data.dev))]).numpy()
    dev_y = np.asarray([int(data.dev[i]["labels"]) for i in range(len(data.dev))])
    rng = np.random.RandomState(0)
    calib_idx = rng.choice(len(data.train), min(len(data.train), config["CALIBRATION_SENTENCES"]), replace=False)
    if isinstance(data.train, data_io.ImageSet):
        data.train.train = False  # calibrate on un-augmented examples
    calib = [data.train[int(i)][key].numpy()[None] for i in calib_idx]
    out = Path(config["OUT_DIR"]) if config["OUT_DIR"] else run / "compressed"
    work = out.with_name(out.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    fp32 = work / "onnxruntime-fp32" / "model.onnx"
    fp32.parent.mkdir()
    torch.onnx.export(_Logits(model, key).eval(), (torch.from_numpy(dev_x[:2]),), str(fp32), input_names=[key],
                      output_names=["logits"], dynamic_axes={key: {0: "batch"}, "logits": {0: "batch"}}, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter({key: c} for c in calib)

        def get_next(self):
            return next(self.it, None)
    pre = work / "pre.onnx"
    quant_pre_process(str(fp32), str(pre))
    int8 = work / "onnxruntime-int8" / "model.onnx"
    int8.parent.mkdir()
    quantize_static(str(pre), str(int8), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink()
    core = ov.Core()
    ov_fp32 = ov.convert_model(str(fp32))
    ov_int8 = nncf.quantize(ov_fp32, nncf.Dataset(calib), subset_size=len(calib))
    for name, m in (("openvino-fp32", ov_fp32), ("openvino-int8", ov_int8)):
        (work / name).mkdir()
        ov.save_model(m, str(work / name / "model.xml"), compress_to_fp16=False)

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    runners = {"pytorch-pruned": lambda x: _Logits(model, key)(torch.from_numpy(x)).detach().numpy()}
    dense = dense_model(settings, results.script, data)
    runners["pytorch-dense (untrained)"] = lambda x: _Logits(dense, key)(torch.from_numpy(x)).detach().numpy()
    for name in ("onnxruntime-fp32", "onnxruntime-int8"):
        session = ort.InferenceSession(str(work / name / "model.onnx"), options, providers=["CPUExecutionProvider"])
        runners[name] = (lambda s: lambda x: s.run(None, {key: x})[0])(session)
    for name in ("openvino-fp32", "openvino-int8"):
        compiled = core.compile_model(str(work / name / "model.xml"), "CPU",
                                      {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"})
        runners[name] = (lambda c: lambda x: c(x)[0])(compiled)
    record = {"run": str(run), "script": results.script, "threads": threads, "rounds": config["ROUNDS"],
              "date": time.strftime("%Y-%m-%d"), "dev_rows": len(dev_y), "variants": {}}
    with torch.no_grad():
        for name, fn in runners.items():
            logits = np.concatenate([fn(dev_x[i:i + 64]) for i in range(0, len(dev_x), 64)])
            files = sorted((work / name).glob("*")) if (work / name).is_dir() else []
            size = sum(f.stat().st_size for f in files) if files else None
            record["variants"][name] = {"accuracy": float((logits.argmax(-1) == dev_y).mean()), "bytes": size,
                                        "batch1": [], "batch64": []}
        singles = [dev_x[i:i + 1] for i in range(min(config["LATENCY_SENTENCES"], len(dev_x)))]
        for _ in range(config["ROUNDS"]):
            for name, fn in runners.items():
                fn(singles[0])
                start = time.perf_counter()
                for s in singles:
                    fn(s)
                record["variants"][name]["batch1"].append(len(singles) / (time.perf_counter() - start))
                start = time.perf_counter()
                for i in range(0, len(dev_x), 64):
                    fn(dev_x[i:i + 64])
                record["variants"][name]["batch64"].append(len(dev_x) / (time.perf_counter() - start))
    base = {k: list(record["variants"]["pytorch-pruned"][k]) for k in ("batch1", "batch64")}
    for v in record["variants"].values():
        for k in ("batch1", "batch64"):  # medians of the values and of the per-round ratios
            v[f"{k}_ratio_to_pytorch_pruned"] = statistics.median(a / b for a, b in zip(v[k], base[k]))
            v[k] = statistics.median(v[k])
    lines = ["| variant | dev accuracy | bytes | examples/s batch 1 | examples/s batch 64 | x PyTorch pruned (1 / 64) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, v in record["variants"].items():
        lines.append(f"| {name} | {v['accuracy']:.4f} | {v['bytes'] or '-'} | {v['batch1']:.0f} | {v['batch64']:.0f} | "
                     f"{v['batch1_ratio_to_pytorch_pruned']:.2f} / {v['batch64_ratio_to_pytorch_pruned']:.2f} |")
    table = "\n".join(lines) + "\n"
    (work / "table.md").write_text(table)
    schema.write_json(work / "compress.json", record)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(work, out)
    print("\n" + table + f"\nwritten: {out}/compress.json, table.md, one folder per variant")
    return record
