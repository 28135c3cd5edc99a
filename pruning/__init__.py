"""Early-bird pruning of BERT-family encoders: the machinery behind bert.py, roberta.py and the study scripts.

The package is layered; each layer imports only the layers listed before it (import-linter checks this in the
test suite: pyproject.toml's [tool.importlinter] contracts, tests/test_architecture.py):

- settings: a script's constants as its configuration (`--key=value`, `--help`, one-line errors); standard library
            only, so every script answers `--help` and a bad setting without importing torch
- core:     units, architecture layouts, criterion base classes, keep-masks, surgery, Fisher information of mask
            gates, the saved pruned-model classes
- data:     tasks, reading and tokenizing their files, model and tokenizer lookup, dev-set metrics
- run:      PruningTrainer and its callbacks, settings checks, schedule, distillation, checkpoints, cost log,
            trainer registry, the experiment's phases, end-of-run measurements, results.json's schema, model cards
- deploy:   ONNX export, ONNX Runtime and OpenVINO, quantization, artifacts, vocabulary trimming, energy
- studies:  RL allocation, the lottery study, retraining-free pruning, sweep tables and plots, statistics
- grid:     processes, grid cells, the grid loop (sweep.py, lottery.py, allocate.py)

The public API below is importable from `pruning` itself; it is loaded on first use (PEP 562), so `import pruning`
costs nothing until a name is read.
"""
from __future__ import annotations

import importlib

_PUBLIC = {
    "AccumulatedCriterion": "pruning.core.criterion", "Criterion": "pruning.core.criterion",
    "keep_masks": "pruning.core.masks", "kth_smallest": "pruning.core.masks",
    "PrunableUnits": "pruning.core.units", "prunable_parameters": "pruning.core.units",
    "PRUNING_STATE_FILE": "pruning.run.checkpoint", "PruningConfig": "pruning.run.pruning_config",
    "PruningTrainer": "pruning.run.trainer",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    """`pruning.<public name>`, imported from its module on first use. Raises AttributeError for other names."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pruning' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
