"""The table of docs/RESULTS.md's CNN / MLP section from a sweep directory of resnet.py or mlp.py runs:

    python -m pruning.convnets.summary sweeps/resnet18-digits
    python -m pruning.convnets.summary sweeps/resnet18-criteria sweeps/resnet18-digits   # dense runs from another sweep

One row per trainer and rate, means ± sample std over seeds: final dev accuracy and its difference to the dense runs
(paired by seed), the early bird's epoch, the pruning step over the dense run's steps, training FLOPs over the
dense run's, parameters and forward FLOPs kept, and the speed ratios measured in each run (pruned / dense, same
process)."""
from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from pruning.run import schema


def mean_std(values, scale=1.0, digits=2) -> str:
    values = [v * scale for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(directory: str, dense_directory: str | None = None) -> str:
    """The table of `directory`'s runs; the dense runs they are paired with are `dense_directory`'s, if given."""
    runs = [schema.read(p) for p in sorted(Path(directory).glob("*/results.json"))]
    pool = [schema.read(p) for p in sorted(Path(dense_directory).glob("*/results.json"))] if dense_directory else runs
    dense = {r.config.seed: r for r in pool if r.trainer == "dense"}
    cells = defaultdict(list)
    for r in runs:
        rate = None if r.pruning is None else r.pruning.rate
        cells[(r.trainer, rate)].append(r)
    lines = ["| trainer | rate | seeds | dev accuracy % | vs dense (points, paired) | EB found | EB epoch | prune step / dense steps "
             "| train FLOPs / dense | params kept | forward FLOPs kept | batch-1 speed-up | batch-64 speed-up | train-step speed-up |",
             "|" + "---|" * 14]
    for (trainer, rate), rs in sorted(cells.items(), key=lambda kv: (kv[0][0] != "dense", kv[0][0], kv[0][1] or 0)):
        acc = [r.metrics.final.accuracy for r in rs]
        diff = [r.metrics.final.accuracy - dense[r.config.seed].metrics.final.accuracy for r in rs if r.config.seed in dense]
        p = [r.pruning for r in rs if r.pruning is not None]
        d = [dense.get(r.config.seed) for r in rs]
        steps = [x.pruning.prune_step / y.optimizer_steps for x, y in zip(rs, d) if x.pruning and y]
        flops = [x.cost.train_flops / y.cost.train_flops for x, y in zip(rs, d) if y]
        speed = [r.speed for r in rs if r.speed is not None and r.pruning is not None]
        lines.append(" | ".join([
            f"| {trainer}", "–" if rate is None else f"{rate:g}", str(len(rs)), mean_std(acc, 100),
            mean_std(diff, 100) if p else "–", f"{sum(x.eb_found for x in p)}/{len(p)}" if p else "–",
            mean_std([x.eb_epoch for x in p], digits=1) if p else "–", mean_std(steps) if p else "–",
            mean_std(flops) if p else "1.00",
            mean_std([r.total_params / r.parameters.dense.total for r in rs]),
            mean_std([r.cost.inference_flops_nonzero / r.cost.inference_flops_dense for r in rs]),
            mean_std([s.batch1_ratio for s in speed]) if speed else "–",
            mean_std([s.batch64_ratio for s in speed]) if speed else "–",
            mean_std([s.train_step_speedup for s in speed]) if speed else "–"]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
