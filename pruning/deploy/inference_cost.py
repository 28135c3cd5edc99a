"""The measured inference cost of a candidate model on this machine, cached by its structure: what
allocate.py's cost-aware reward charges (AMC, He et al. 2018, measured instead of estimated from FLOPs).

A candidate is a physically pruned copy (`pruning.core.surgery.remove_units`): its cost depends only on its
shapes, the heads and FFN neurons each layer kept (`structure_key`), not on which units or on the weights.
`CostMeter` measures one model:
- latency: milliseconds per sentence at batch 1, over `single` sentences spread evenly over the cost set,
  one forward each, without padding;
- throughput: sentences per second at the cost batch size (`batch_size`, allocate.py's COST_BATCH_SIZE)
  over the whole cost set, in fixed length-sorted batches;
- peak memory: the bytes of the model's parameters and buffers plus the peak that one forward of the
  cost set's batch with the most tokens allocates through torch's CPU allocator, read from the
  profiler's allocation events (`torch.profiler.profile(profile_memory=True)`: every tensor allocation
  and free, in order; the running sum's maximum is the forward's peak). This measures the candidate's own
  tensors, unlike the process's RSS, which the allocator's reuse of freed memory and every other object
  of the process blur, and unlike tracemalloc, which does not see torch's allocations.
Timing noise: one warm-up forward of each kind, then `repeats` rounds of both timings, each round followed by
the same round of the dense model (the reference), so the ratio to dense is the median of per-round ratios,
measured under the same load (as `allocation.inference_speeds` does); the absolute figures are medians over
the rounds, with torch's thread count recorded beside them. `CostCache` keeps each structure's
figures in memory and in a JSON file (written atomically after every new structure), so each structure is
timed once per search, and a resumed search reads back the very figures it used.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from pruning.core.units import PrunableUnits
from pruning.data.loading import MODEL_INPUTS

COSTS = ("latency", "throughput", "memory")


def structure_key(model: nn.Module) -> str:
    """The structure a cost depends on: per encoder layer, the live units of each kind, as text
    ("h12 n1536|h8 n900|..."; layers separated by "|", each kind's initial and count). Raises ValueError
    for a model without a heads+neurons layout (`PrunableUnits`)."""
    units = PrunableUnits(model, "heads+neurons")
    layers: dict[int, list[str]] = {}
    for g in units.groups.values():
        layers.setdefault(g.layer, []).append(f"{g.kind[0]}{units.live_size(g.name)}")
    return "|".join(" ".join(layers[i]) for i in sorted(layers))


def memory_bytes(model: nn.Module) -> int:
    """Bytes the model's parameters and buffers take in memory (on disk: `pruning.deploy.runtimes.disk_bytes`)."""
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


@contextlib.contextmanager
def _stderr_to_devnull():
    """File descriptor 2 to /dev/null for the block: the profiler's C++ side prints two lines at every start
    and stop ("profiler_start", "profiler_stop"), which no log level silences: a search would print
    hundreds."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.inference_mode()
def peak_forward_bytes(model: nn.Module, inputs: dict[str, torch.Tensor]) -> int:
    """The most bytes that one forward of `inputs` holds allocated at once through torch's CPU allocator
    beyond what was allocated before it (activations, attention scores, workspaces), from the profiler's
    allocation events in time order. Raises RuntimeError when the profiler records no allocation (a torch
    build without memory profiling)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile
    with _stderr_to_devnull(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(**inputs)
    events = []

    def walk(node):
        if node.tag == _EventType.Allocation:
            events.append((node.start_time_ns, node.extra_fields.alloc_size))
        for child in node.children:
            walk(child)
    for root in prof.profiler.kineto_results.experimental_event_tree():
        walk(root)
    if not events:
        raise RuntimeError("the torch profiler recorded no allocation: peak memory cannot be measured here")
    held = peak = 0
    for _, size in sorted(events, key=lambda e: e[0]):
        held += size
        peak = max(peak, held)
    return peak


class CostMeter:
    """Measures a model's latency, throughput and peak memory on fixed inputs (see the module docstring).

    `batches`: the cost set at the cost batch size, dicts of the model's inputs (`pruning.data.loading.MODEL_INPUTS`
    it has, (batch, tokens); other keys such as labels are ignored); `single`: how many of its sentences
    (evenly spaced over the set) to time one at a time; `repeats`: timing rounds (medians are kept);
    `reference` (the dense model): timed in every round right after the candidate, so that the ratios to it ("latency_ratio", "throughput_ratio":
    medians of the per-round ratios) do not drift with the machine's load over a long search; it gets one
    untimed round before the first measurement. Raises ValueError for empty batches, single < 1 or repeats < 1."""

    def __init__(self, batches: list[dict[str, torch.Tensor]], single: int = 16, repeats: int = 3,
                 reference: nn.Module | None = None, clock: Callable[[], float] = time.perf_counter):
        if not batches or single < 1 or repeats < 1:
            raise ValueError("the cost meter needs some sentences, single >= 1 and repeats >= 1")
        self.batches = [{k: b[k] for k in MODEL_INPUTS if k in b} for b in batches]
        self.sentences = sum(len(b["input_ids"]) for b in self.batches)
        self.batch_size = max(len(b["input_ids"]) for b in self.batches)
        every = []
        for b in self.batches:  # one sentence at a time, without its padding
            for i in range(len(b["input_ids"])):
                n = int(b["attention_mask"][i].sum()) if "attention_mask" in b else b["input_ids"].shape[1]
                every.append({k: v[i: i + 1, :n] for k, v in b.items()})
        single = min(single, len(every))  # spread over the set (length-sorted batches: not just the shortest)
        self.single = [every[i * len(every) // single] for i in range(single)]
        self.repeats, self.clock, self.reference = repeats, clock, reference
        self.largest = max(self.batches, key=lambda b: b["input_ids"].numel())
        self._warm = reference is None

    def meta(self) -> dict:
        """What the figures depend on besides the structure: a cache is only valid for the same."""
        return {"sentences": self.sentences, "batch_size": self.batch_size, "single": len(self.single),
                "repeats": self.repeats, "threads": torch.get_num_threads(),
                "reference": structure_key(self.reference) if self.reference is not None else None}

    def _round(self, model: nn.Module) -> tuple[float, float]:
        """(seconds per sentence at batch 1, sentences per second at the cost batch size) of one round."""
        started = self.clock()
        for x in self.single:
            model(**x)
        latency = (self.clock() - started) / len(self.single)
        started = self.clock()
        for b in self.batches:
            model(**b)
        return latency, self.sentences / (self.clock() - started)

    @torch.inference_mode()
    def __call__(self, model: nn.Module) -> dict:
        """{"latency_ms": ms per sentence at batch 1, "sentences_per_second": at the cost batch size,
        "peak_memory_mb": MB (2**20 bytes), "model_mb": of it, the parameters and buffers; with a reference,
        "latency_ratio" and "throughput_ratio": the candidate's time over the reference's, < 1 faster}:
        medians over the rounds for the timings."""
        model.eval()
        if not self._warm:
            self.reference.eval()
            self._round(self.reference)
            self._warm = True
        model(**self.single[0])
        model(**self.batches[0])  # warm-up
        rounds, ratios = [], []
        for _ in range(self.repeats):
            rounds.append(self._round(model))
            if self.reference is not None:
                ref = self._round(self.reference)
                ratios.append((rounds[-1][0] / ref[0], ref[1] / rounds[-1][1]))
        weights = memory_bytes(model)
        out = {"latency_ms": 1000 * statistics.median(r[0] for r in rounds),
               "sentences_per_second": statistics.median(r[1] for r in rounds),
               "peak_memory_mb": (weights + peak_forward_bytes(model, self.largest)) / 2 ** 20,
               "model_mb": weights / 2 ** 20}
        if ratios:
            out.update(latency_ratio=statistics.median(r[0] for r in ratios),
                       throughput_ratio=statistics.median(r[1] for r in ratios))
        return out


class CostCache:
    """`measure(model)` once per structure (`structure_key`): in memory, and in `path` (JSON: {"meta": ...,
    "costs": {key: figures}}) when given, rewritten atomically after every new structure and read back at
    start. Raises ValueError when `path` holds figures measured under another `meta` (other cost
    sentences, batch size, rounds or threads)."""

    def __init__(self, measure: Callable[[nn.Module], dict], path: Path | None = None, meta: dict | None = None):
        self.measure, self.path, self.meta = measure, Path(path) if path else None, json.loads(json.dumps(meta or {}))
        self.costs: dict[str, dict] = {}
        self.measured = 0  # structures measured by this object (not read back)
        if self.path and self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("meta") != self.meta:
                raise ValueError(f"{self.path} holds costs measured with other settings ({saved.get('meta')} against "
                                 f"{self.meta}); use another OUT_DIR or delete it")
            self.costs = saved["costs"]

    def __call__(self, model: nn.Module) -> dict:
        """The figures of `model`'s structure: read from the cache, or measured now and cached."""
        key = structure_key(model)
        if key not in self.costs:
            self.costs[key] = {**self.measure(model), "structure": key}
            self.measured += 1
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"meta": self.meta, "costs": self.costs}))
                os.replace(tmp, self.path)
        return self.costs[key]


def cost_ratio(cost: dict, dense: dict, which: str) -> float:
    """A candidate's cost relative to the dense model's (< 1: cheaper). "latency": ms per sentence at batch
    1 over dense's; "throughput": the time per sentence at the cost batch size over dense's (dense
    sentences/s over the candidate's); "memory": peak MB over dense's. The two timings use the ratios
    measured against the dense model in the same rounds when the figures have them (`CostMeter` with a
    reference), else the two medians. Raises ValueError for another cost."""
    if which == "latency":
        return cost["latency_ratio"] if "latency_ratio" in cost else cost["latency_ms"] / dense["latency_ms"]
    if which == "throughput":
        return (cost["throughput_ratio"] if "throughput_ratio" in cost
                else dense["sentences_per_second"] / cost["sentences_per_second"])
    if which == "memory":
        return cost["peak_memory_mb"] / dense["peak_memory_mb"]
    raise ValueError(f"unknown cost {which!r}; choose one of {', '.join(COSTS)}")
