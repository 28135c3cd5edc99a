"""Speed as the setting: a per-layer latency table measured once per machine, runtime, architecture and sequence
length, and the structure (heads, FFN width, whole MLP, whole layer per encoder layer) of greatest retained
importance that meets a latency budget (ZipLM, Kurtic et al., NeurIPS 2023: per-layer latency tables and a
dynamic programme over per-layer options; the same additive model of a layer's time as its attention block plus
its FFN).

The table (`LatencyTable`, milliseconds per batch of `batch_size` sentences of `seq_len` tokens, in the target
runtime at `threads` intra-op threads):
- `attention[h]`: one encoder layer's attention block with h heads kept (h = 1 .. H);
- `ffn[w]`: one encoder layer's FFN with w neurons kept (w on the measured grid; 0 = the whole MLP removed, which
  costs 0 beyond the attention block); widths between two grid points are interpolated linearly;
- `fixed`: everything that is not an encoder layer (embeddings, pooler, classifier, the runtime's overhead).
A model of per-layer structure [(h_0, w_0), ..., None (a removed layer), ...] is predicted to take
fixed + sum over kept layers of attention[h_l] + ffn[w_l] (`LatencyTable.latency`).

How it is measured (`build_table`): probe models of the family, copies of the given model pruned by
`surgery.remove_units`, with every layer alike, are timed by `measure` (the target runtime's own: PyTorch, or the
ONNX Runtime / OpenVINO int8 variants `pruning.deploy.runtimes` writes, quantized as compress.py quantizes them), and the
per-layer parts are their differences divided by the probe's layer count, so one layer's share rises above the
timing noise:
    A(h)  = T(all L layers with h heads, MLP removed)          h = 1 .. H
    F(w)  = T(all L layers with 1 head, w neurons)             w on the grid
    T1    = T(1 layer with 1 head, MLP removed)
    per-layer cost c = (A(1) - T1) / (L - 1);  fixed = T1 - c
    attention[h] = (A(h) - fixed) / L;  ffn[w] = (F(w) - A(1)) / L
Where the runtime cannot run a layer without its MLP (ONNX Runtime's int8 quantizer and OpenVINO's converter refuse a
0-wide FFN: torch 2.13, onnxruntime 1.32, openvino 2026.4), the probes "MLP removed" keep the smallest measured width
instead, attention[h] includes that FFN, ffn[w] is the cost beyond it, and the selection never removes a whole MLP
there (whole layers still go).
The table is cached as JSON (`cached_table`) with its measurement date, the CPU, the runtime and its version and
the architecture; a cached table is reused only when all of these, the sequence length, batch size, threads and
width grid are today's, and measured again otherwise (the reason is returned).

Timing noise makes a measured table dip where more work cannot take less time (7 heads below 6, and on MiniLM at
48 tokens 4 to 11 heads within 3 ms of each other); `choose` prices options on the table's least-squares lines
(`LatencyTable.linear`, the default) or its isotonic fit (`LatencyTable.monotone`), or on the raw table. The length a table is
measured at matters: attention's share grows with it, so a table is measured at the deployment's length
(`deployment_length`: batches padded to their longest, as compress.py serves the dev split), not a typical
sentence's (issue 36's first point, priced at 16 tokens and timed at 51, ran 1.86x where 2.01x was predicted).

The selection (`select_structure`): each layer's options are (h, w) for h in 1..H and w in the allowed widths
(multiples of `width_multiple`, and 0: the MLP removed), and "layer removed"; each option has its latency from the
table and its estimated loss (`LayerImportance.loss`: the Fisher information of the units it removes, or the whole
MLP's / layer's own score); a dynamic programme over the layers (a knapsack with one choice per layer) finds the
options of least summed loss (= greatest retained importance) whose summed latency is within the budget. Latencies
are rounded *up* to the budget's resolution, so a returned structure always meets the budget.
"""
from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.isotonic import isotonic_regression
from torch import nn

from pruning.core.surgery import remove_units
from pruning.host import cpu_name
from pruning.core.units import PrunableUnits, encoder_layers
from pruning.deploy import runtimes
TARGETS = ("openvino-int8", "onnxruntime-int8", "pytorch-fp32")
FITS = ("linear", "monotone", "raw")  # how `choose` reads a measured table (`LatencyTable.fitted`)
TABLE_VERSION = 1

Structure = list  # per encoder layer: (heads kept, FFN width kept) or None (the layer removed)


# --- the table ---------------------------------------------------------------------------------------
@dataclass
class LatencyTable:
    """Per-layer latencies in milliseconds (see the module docstring). `meta` records what it was measured on:
    target, runtime_version, architecture, seq_len, batch_size, threads, widths, cpu, measured_at, probe_layers."""
    fixed: float
    attention: dict[int, float]
    ffn: dict[int, float]
    meta: dict = field(default_factory=dict)

    @property
    def mlp_removable(self) -> bool:
        """Whether the runtime runs a layer without its MLP (a 0-wide FFN); where it does not, `attention` includes
        an FFN of the smallest measured width and `ffn` is the cost beyond it."""
        return self.meta.get("mlp_removable", True)

    def ffn_ms(self, width: int) -> float:
        """One layer's FFN at `width` neurons (0: MLP removed, 0 ms), linearly interpolated between the measured
        widths. Raises ValueError outside the measured range, or for width 0 where the MLP is not removable."""
        if width == 0:
            if not self.mlp_removable:
                raise ValueError(f"{self.meta.get('target')} cannot run a layer without its MLP "
                                 f"({self.meta.get('mlp_not_removable_because')})")
            return 0.0
        grid = sorted(self.ffn)
        if width in self.ffn:
            return self.ffn[width]
        if not grid[0] <= width <= grid[-1]:
            raise ValueError(f"FFN width {width} is outside the measured widths {grid[0]}..{grid[-1]}")
        return float(np.interp(width, grid, [self.ffn[w] for w in grid]))

    def layer_ms(self, heads: int, width: int) -> float:
        """One kept layer with `heads` heads (>= 1) and `width` FFN neurons. Raises KeyError for an unmeasured
        head count."""
        return self.attention[heads] + self.ffn_ms(width)

    def latency(self, structure: Structure) -> float:
        """The predicted milliseconds of a model of this `structure` (per layer (heads, width) or None)."""
        return self.fixed + sum(self.layer_ms(*o) for o in structure if o is not None)

    def monotone(self) -> "LatencyTable":
        """This table with `attention` non-decreasing in heads and `ffn` non-decreasing in width (isotonic
        regression, least squares: `sklearn.isotonic.isotonic_regression`), `fixed` and `meta` unchanged. A layer
        with more heads or neurons does more work on the same shapes, so a measured dip (attention[6] above
        attention[7]) is timing noise; a selection on the raw table would buy it. The raw table stays what
        `rounding_report` reads, where a dip at a multiple of 8 is the effect asked about."""
        def fit(d: dict[int, float]) -> dict[int, float]:
            keys = sorted(d)
            return dict(zip(keys, (float(v) for v in isotonic_regression([d[k] for k in keys], increasing=True))))
        return LatencyTable(self.fixed, fit(self.attention), fit(self.ffn), {**self.meta, "monotone": True})

    def linear(self) -> "LatencyTable":
        """This table with `attention` and `ffn` replaced by their least-squares lines (ms = a + b x heads,
        ms = c + d x width over the measured points, clamped at 0), `fixed` and `meta` unchanged. An attention
        block's work (projections, scores, context) and an FFN's are linear in heads and width; each probe's
        timing is noisy (one probe is one model exported, quantized and timed), and the line pools all of them.
        On MiniLM in OpenVINO int8 (issue 36) the line ranked three deployed structures as their measured speeds
        did, where the raw and the isotonic (`monotone`) tables did not. A part of one point is kept as it is."""
        def fit(d: dict[int, float]) -> dict[int, float]:
            if len(d) < 2:
                return dict(d)
            keys = sorted(d)
            slope, intercept = np.polyfit(keys, [d[k] for k in keys], 1)
            return {k: max(0.0, float(intercept + slope * k)) for k in keys}
        return LatencyTable(self.fixed, fit(self.attention), fit(self.ffn), {**self.meta, "fit": "linear"})

    def fitted(self, fit: str) -> "LatencyTable":
        """The table the selection prices options on: "linear" (`linear`), "monotone" (`monotone`) or "raw" (as
        measured). Raises ValueError for another name."""
        if fit not in FITS:
            raise ValueError(f"unknown table fit {fit!r}; choose one of {', '.join(FITS)}")
        return {"linear": self.linear, "monotone": self.monotone, "raw": lambda: self}[fit]()

    def to_json(self) -> dict:
        return {"version": TABLE_VERSION, "fixed": self.fixed, "attention": {str(k): v for k, v in self.attention.items()},
                "ffn": {str(k): v for k, v in self.ffn.items()}, "meta": self.meta}

    @classmethod
    def from_json(cls, d: dict) -> "LatencyTable":
        return cls(float(d["fixed"]), {int(k): float(v) for k, v in d["attention"].items()},
                   {int(k): float(v) for k, v in d["ffn"].items()}, dict(d["meta"]))


def architecture(model: nn.Module) -> dict:
    """What a table depends on in the model: model_type, hidden size, layers, heads, FFN size, vocabulary (from the
    config, through the family's `Layout`)."""
    _, _, layers = encoder_layers(model)
    c = model.config
    return {"model_type": c.model_type, "hidden_size": c.hidden_size, "layers": len(layers), "heads": _heads(model),
            "intermediate_size": _ffn_size(model), "vocab_size": c.vocab_size}


def _ffn_size(model) -> int:
    units = PrunableUnits(model, "heads+neurons")
    return max(g.size for g in units.groups.values() if g.kind == "neuron")


def _heads(model) -> int:
    units = PrunableUnits(model, "heads+neurons")
    return max(g.size for g in units.groups.values() if g.kind == "head")


def runtime_version(target: str) -> str:
    """The versions the target's timings depend on, as text: torch for pytorch-fp32; onnxruntime (and torch, which
    exports) for onnxruntime-int8; openvino and nncf (and torch) for openvino-int8. Raises ValueError for an
    unknown target."""
    if target not in TARGETS:
        raise ValueError(f"unknown TARGET {target!r}; choose one of {', '.join(TARGETS)}")
    parts = [f"torch {torch.__version__}"]
    if target == "onnxruntime-int8":
        import onnxruntime
        parts.append(f"onnxruntime {onnxruntime.__version__}")
    if target == "openvino-int8":
        import nncf
        import openvino
        parts += [f"openvino {openvino.__version__}", f"nncf {nncf.__version__}"]
    return ", ".join(parts)


def width_grid(intermediate: int, step: int) -> list[int]:
    """The FFN widths a table measures: step, 2*step, ... and the dense width itself (0 is the MLP removed, not
    measured). Raises ValueError for step < 1."""
    if step < 1:
        raise ValueError(f"the table's width step must be >= 1, got {step}")
    return sorted({*range(step, intermediate + 1, step), intermediate})


def probe_model(model: nn.Module, layers: int, heads: int, width: int) -> nn.Module:
    """A copy of `model` (heads+neurons family) with its first `layers` encoder layers kept, each with its first
    `heads` heads and `width` FFN neurons (0: the MLP removed), physically pruned (`surgery.remove_units`)."""
    probe = copy.deepcopy(model).eval()
    units = PrunableUnits(probe, "heads+neurons", ("mlp", "layer"))
    keep = {}
    for name, g in units.mask_groups.items():
        m = torch.zeros(g.size, dtype=torch.bool)
        if g.kind == "head":
            m[:heads] = True
        elif g.kind == "neuron":
            m[:width] = True
        elif g.kind == "mlp":
            m[:] = width > 0
        else:
            m[:layers] = True
        keep[name] = m
    remove_units(units, units.compose(keep))
    return probe


def probe_inputs(model: nn.Module, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random token ids (batch_size, seq_len) int64, an all-ones attention mask and, where the model reads segments,
    zero token_type_ids: the batch every probe is timed on (latency depends on shapes, not on the tokens)."""
    import inspect
    g = np.random.default_rng(seed)
    vocab = model.config.vocab_size
    out = {"input_ids": g.integers(min(5, vocab - 1), vocab, (batch_size, seq_len), dtype=np.int64),
           "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64)}
    if "token_type_ids" in inspect.signature(model.forward).parameters:
        out["token_type_ids"] = np.zeros((batch_size, seq_len), dtype=np.int64)
    return out


def time_ms(run: Callable[[], object], repeats: int = 10, warmup: int = 2) -> float:
    """The median milliseconds of `repeats` calls of `run` after `warmup` calls."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def runtime_measure(target: str, batch_size: int, seq_len: int, threads: int, repeats: int = 10
                    ) -> Callable[[nn.Module], float]:
    """model -> median milliseconds of one batch in `target`: PyTorch fp32 (inference mode, `threads` threads);
    ONNX Runtime int8 (`runtimes.export_onnx` + `runtimes.quantize_int8`, compress.py's int8); OpenVINO int8
    (`runtimes.convert_openvino` + `runtimes.quantize_openvino_int8`, calibrated on 8 random-token sentences)."""

    def measure(model: nn.Module) -> float:
        inputs = probe_inputs(model, batch_size, seq_len)
        if target == "pytorch-fp32":
            torch.set_num_threads(threads)
            batch = {k: torch.from_numpy(v) for k, v in inputs.items()}
            with torch.inference_mode():
                return time_ms(lambda: model(**batch), repeats)
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "fp32", Path(tmp) / "int8"
            fp32.mkdir()
            int8.mkdir()
            runtimes.export_onnx(model, fp32, {k: v[:2] for k, v in inputs.items()}, tolerance=1e-2)
            if target == "onnxruntime-int8":
                runtimes.quantize_int8(fp32, int8)
            else:
                ov32 = Path(tmp) / "ov32"
                ov32.mkdir()
                runtimes.convert_openvino(fp32, ov32, {k: v[:2] for k, v in inputs.items()}, tolerance=1e-2)
                calibration = [{k: v[i:i + 1] for k, v in probe_inputs(model, 8, seq_len, seed=1).items()}
                               for i in range(8)]
                runtimes.quantize_openvino_int8(ov32, int8, calibration)
            run = runtimes.runner(int8, threads)
            return time_ms(lambda: run(inputs), repeats)
    return measure


def build_table(model: nn.Module, target: str, seq_len: int, batch_size: int, threads: int, width_step: int,
                measure: Callable[[nn.Module], float] | None = None, progress=None) -> LatencyTable:
    """Measure the table of `model`'s architecture (see the module docstring). `measure`: model -> milliseconds
    (default `runtime_measure` of the target). Needs at least 2 encoder layers. Per-layer parts that come out
    negative (noise) are clamped at 0. Raises ValueError for an unknown target or a model of one layer."""
    arch = architecture(model)
    L, H, I = arch["layers"], arch["heads"], arch["intermediate_size"]
    if L < 2:
        raise ValueError("a latency table needs a model of at least 2 encoder layers (the fixed part is the "
                         "difference of a 1-layer and an L-layer probe)")
    version = runtime_version(target)
    measure = measure or runtime_measure(target, batch_size, seq_len, threads)
    widths = width_grid(I, width_step)
    step = progress or (lambda: None)

    def t(layers, heads, width):
        ms = measure(probe_model(model, layers, heads, width))
        step()
        return ms
    base, why = 0, None  # the FFN width of the attention probes: 0 (the MLP removed) where the runtime takes it
    try:
        t1 = t(1, 1, 0)
    except Exception as e:  # e.g. ONNX Runtime's int8 quantizer and OpenVINO's converter refuse a 0-wide FFN
        base, why = widths[0], f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200]}" if str(e).strip() else type(e).__name__
        t1 = t(1, 1, base)
    a = {h: t(L, h, base) for h in range(1, H + 1)}
    f = {w: (a[1] if w == base else t(L, 1, w)) for w in widths}
    per_layer = (a[1] - t1) / (L - 1)
    fixed = t1 - per_layer
    attention = {h: max(0.0, (a[h] - fixed) / L) for h in a}   # with an FFN of width `base`
    ffn = {w: max(0.0, (f[w] - a[1]) / L) for w in widths}    # beyond width `base`
    meta = {"target": target, "runtime_version": version, "architecture": arch, "seq_len": seq_len,
            "batch_size": batch_size, "threads": threads, "widths": widths, "width_step": width_step,
            "cpu": cpu_name(), "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "probe_layers": L, "mlp_removable": base == 0, "mlp_not_removable_because": why, "base_width": base,
            "probes_ms": {"t1": t1, "attention": a, "ffn": f}}
    return LatencyTable(fixed, attention, ffn, json.loads(json.dumps(meta)))


def deployment_length(lengths: list[int], batch_size: int, multiple: int = 8) -> int:
    """The sequence length a batch-`batch_size` deployment computes on: the mean length of consecutive batches of
    `lengths` (tokens per example, in the order they are served), each padded to its longest example, weighted by
    batch size, rounded to the nearest multiple of `multiple` (at least `multiple`). compress.py times the dev
    split this way (`runtimes.dev_batches`: dev order, each batch padded to its own longest). Raises ValueError
    for no lengths or batch_size < 1."""
    if not lengths or batch_size < 1:
        raise ValueError("deployment_length needs at least one length and a batch size >= 1")
    padded = [max(lengths[i:i + batch_size]) * len(lengths[i:i + batch_size]) for i in range(0, len(lengths), batch_size)]
    return max(multiple, multiple * round(sum(padded) / len(lengths) / multiple))


def table_path(cache_dir: Path, target: str, seq_len: int, batch_size: int, threads: int, arch: dict) -> Path:
    """Where a table is cached: one file per architecture (`architecture`: family, sizes; a short digest of them
    in the name, so MiniLM's and BERT-base's tables live side by side), target, sequence length, batch size and
    thread count."""
    digest = hashlib.sha1(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:8]
    return Path(cache_dir) / (f"latency-{arch['model_type']}-{arch['layers']}x{arch['hidden_size']}-{digest}-{target}"
                              f"-t{seq_len}-b{batch_size}-th{threads}.json")


def stale_reason(table: LatencyTable, model: nn.Module, target: str, width_step: int) -> str | None:
    """Why a cached table cannot be reused for `model` in `target` today (None: it can): another runtime version,
    architecture, CPU, width step or table version."""
    meta = table.meta
    arch = architecture(model)
    checks = (("runtime_version", runtime_version(target)), ("architecture", arch), ("cpu", cpu_name()),
              ("width_step", width_step))
    for key, now in checks:
        if meta.get(key) != now:
            return f"{key} changed: {meta.get(key)!r} when measured, {now!r} now"
    return None


def cached_table(model: nn.Module, target: str, seq_len: int, batch_size: int, threads: int, width_step: int,
                 cache_dir: Path, measure: Callable[[nn.Module], float] | None = None, progress=None
                 ) -> tuple[LatencyTable, str]:
    """(the table, how it was obtained: "cached", "measured", or "measured again: <reason>"). Read from
    `cache_dir` when a table of this architecture, target, length, batch and threads is there and `stale_reason` finds
    nothing; otherwise measured (`build_table`) and written there atomically."""
    arch = architecture(model)
    path = table_path(cache_dir, target, seq_len, batch_size, threads, arch)
    how = "measured"
    if path.is_file():
        try:
            data = json.loads(path.read_text())
            old = LatencyTable.from_json(data) if data.get("version") == TABLE_VERSION else None
        except (json.JSONDecodeError, KeyError, ValueError):
            old = None
        reason = "unreadable or another table version" if old is None else stale_reason(old, model, target, width_step)
        if reason is None:
            return old, "cached"
        how = f"measured again: {reason}"
    table = build_table(model, target, seq_len, batch_size, threads, width_step, measure, progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table.to_json(), indent=1))
    os.replace(tmp, path)
    return table, how


def rounding_report(table: LatencyTable, multiples=(8, 16, 32)) -> list[dict]:
    """Whether widths that are multiples of m run faster than their neighbours on the table's grid: for each m,
    the mean of ffn[w] / ffn interpolated from the two measured widths around w that are not multiples of m
    (< 1: a multiple pays). Only meaningful on a table measured with a width step below m (e.g. 1 or 4 for m = 8)."""
    grid = sorted(table.ffn)
    out = []
    for m in multiples:
        ratios = []
        for i in range(1, len(grid) - 1):
            w, lo, hi = grid[i], grid[i - 1], grid[i + 1]
            if w % m or not (lo % m and hi % m):
                continue
            between = table.ffn[lo] + (table.ffn[hi] - table.ffn[lo]) * (w - lo) / (hi - lo)
            if between > 0:
                ratios.append(table.ffn[w] / between)
        out.append({"multiple": m, "widths_compared": len(ratios),
                    "mean_ratio_to_neighbours": float(np.mean(ratios)) if ratios else None})
    return out


# --- importance of each layer's options --------------------------------------------------------------------
@dataclass
class LayerImportance:
    """One encoder layer's importance, as estimated loss increases (Fisher information: Kwon et al. 2022; loss
    units, >= 0): `heads` (H,) and `neurons` (I,) per unit; `mlp` of removing the whole FFN (None: the sum of its
    neurons'); `layer` of removing the layer (None: the sum of everything in it)."""
    heads: torch.Tensor
    neurons: torch.Tensor
    mlp: float | None = None
    layer: float | None = None

    def __post_init__(self):
        self._h = np.concatenate([[0.0], np.cumsum(np.sort(self.heads.double().numpy())[::-1])])
        self._n = np.concatenate([[0.0], np.cumsum(np.sort(self.neurons.double().numpy())[::-1])])

    def loss(self, option) -> float:
        """The estimated loss increase of an option: (h, w) removes all but the h most important heads and the w
        most important neurons (w = 0: the whole MLP, `mlp` where given); None removes the layer."""
        total_h, total_n = self._h[-1], self._n[-1]
        mlp = total_n if self.mlp is None else self.mlp
        if option is None:
            return float(total_h + total_n) if self.layer is None else float(self.layer)
        h, w = option
        return float(total_h - self._h[h] + (mlp if w == 0 else total_n - self._n[w]))


@dataclass
class Selection:
    """The chosen structure (per layer (heads, width) or None), its predicted latency (ms) and estimated loss."""
    structure: Structure
    latency_ms: float
    loss: float
    budget_ms: float


def layer_options(heads: int, widths: list[int], can_remove_layer: bool = True) -> list:
    """Every option of one layer: (h, w) for h in 1..heads and w in `widths` (0 = MLP removed), and None."""
    out = [(h, w) for h in range(1, heads + 1) for w in widths]
    return out + ([None] if can_remove_layer else [])


def allowed_widths(intermediate: int, multiple: int) -> list[int]:
    """0 (the MLP removed), and every multiple of `multiple` up to the dense width, and the dense width."""
    if multiple < 1:
        raise ValueError(f"WIDTH_MULTIPLE must be >= 1, got {multiple}")
    return sorted({0, *range(multiple, intermediate + 1, multiple), intermediate})


def select_structure(options: list[list], latency: list[list[float]], loss: list[list[float]], budget: float,
                     resolution: int = 2000) -> list[int]:
    """Indices, one per layer, of the options of least summed `loss` whose summed `latency` is <= `budget`.

    `options[l]`: layer l's options (only their count is used); `latency[l][k]`, `loss[l][k]`: option k's
    latency (>= 0, the budget's units) and loss. A dynamic programme over layers on the budget cut into
    `resolution` buckets; each latency is rounded up to whole buckets, so the result always meets the budget
    (and is exact when every latency is a whole number of buckets). Raises ValueError when no choice fits."""
    if budget < 0:
        raise ValueError(f"the latency budget is negative ({budget:.4g}): not even the fixed part fits")
    unit = budget / resolution if budget > 0 else 1.0
    B = resolution if budget > 0 else 0
    INF = float("inf")
    best = np.zeros(B + 1)  # best[c]: least loss of the layers so far using at most c buckets
    choices = []
    for lat, los in zip(latency, loss):
        cost = [math.ceil(x / unit - 1e-9) if x > 0 else 0 for x in lat]
        # per cost, the option of least loss
        cheapest = {}
        for k, (c, v) in enumerate(zip(cost, los)):
            if c <= B and (c not in cheapest or v < los[cheapest[c]]):
                cheapest[c] = k
        new = np.full(B + 1, INF)
        pick = np.full(B + 1, -1, dtype=np.int64)
        for c, k in sorted(cheapest.items()):
            cand = np.full(B + 1, INF)
            cand[c:] = best[:B + 1 - c] + los[k]
            better = cand < new
            new[better], pick[better] = cand[better], k
        choices.append(pick)
        best = new
    if not np.isfinite(best[B]):
        raise ValueError("no structure meets the latency budget: even the cheapest option of every layer is over it")
    out, c = [], B
    for l in range(len(latency) - 1, -1, -1):
        k = int(choices[l][c])
        out.append(k)
        c -= math.ceil(latency[l][k] / unit - 1e-9) if latency[l][k] > 0 else 0
    return out[::-1]


def choose(table: LatencyTable, importance: list[LayerImportance], speedup: float, width_multiple: int,
           dense_ms: float | None = None, protected: list[int] = (), resolution: int = 2000,
           fit: str = "linear", uniform: bool = False) -> Selection:
    """The structure of least estimated loss whose table latency is at most (dense latency) / `speedup`, on the
    table as `fit` reads it (`LatencyTable.fitted`: its least-squares lines by default). `uniform`: the same (heads, width) in
    every layer and no layer removed (EarlyBERT's uniform rates, the baseline the per-layer choice is measured
    against), the one of least summed loss within the same budget.
    `importance`: one `LayerImportance` per encoder layer; `dense_ms` defaults to the table's dense model (every
    head, the full width). `protected`: positions of layers never removed (`units.protected_layers`: layer 0
    of some families, the last layer of a first-token classifier). Raises
    ValueError for speedup < 1 or a budget no structure meets."""
    if not speedup >= 1:
        raise ValueError(f"SPEEDUP must be >= 1, got {speedup}")
    table = table.fitted(fit)
    H = len(importance[0].heads)
    I = len(importance[0].neurons)
    dense = table.latency([(H, I)] * len(importance)) if dense_ms is None else dense_ms
    budget = dense / speedup
    widths = allowed_widths(I, width_multiple)
    if not table.mlp_removable:  # the runtime cannot run a 0-wide FFN (the table's record says why)
        widths = [w for w in widths if w >= min(table.ffn)]
    if uniform:
        fits = [(sum(imp.loss(o) for imp in importance), o) for o in layer_options(H, widths, False)
                if table.latency([o] * len(importance)) <= budget + 1e-9]
        if not fits:
            raise ValueError("no uniform structure meets the latency budget: even 1 head and the narrowest FFN in "
                             "every layer is over it")
        loss, o = min(fits, key=lambda f: f[0])
        return Selection([o] * len(importance), table.latency([o] * len(importance)), loss, budget)
    options = [layer_options(H, widths, l not in protected) for l in range(len(importance))]
    lat = [[0.0 if o is None else table.layer_ms(*o) for o in opts] for opts in options]
    los = [[imp.loss(o) for o in opts] for opts, imp in zip(options, importance)]
    picks = select_structure(options, lat, los, budget - table.fixed, resolution)
    structure = [options[l][k] for l, k in enumerate(picks)]
    return Selection(structure, table.latency(structure), sum(los[l][k] for l, k in enumerate(picks)), budget)


def structure_rates(structure: Structure, heads: int, intermediate: int) -> dict[str, tuple]:
    """bert.py's per-layer settings that prune a dense model to `structure`: HEAD_RATE and NEURON_RATE (removed
    fraction per layer; their counts are exact: round(rate x size)), MLP_RATE and LAYER_RATE (0/1 per layer)."""
    out = {"HEAD_RATE": [], "NEURON_RATE": [], "MLP_RATE": [], "LAYER_RATE": []}
    for o in structure:
        h, w = (heads, intermediate) if o is None else o
        out["HEAD_RATE"].append((heads - h) / heads)
        out["NEURON_RATE"].append(0.0 if w == 0 else (intermediate - w) / intermediate)
        out["MLP_RATE"].append(int(o is not None and w == 0))
        out["LAYER_RATE"].append(int(o is None))
    return {k: tuple(v) for k, v in out.items()}
