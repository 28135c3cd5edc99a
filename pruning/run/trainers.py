"""The trainer registry resolved: a run's TRAINER, given by name (`pruning.settings.TRAINERS`) or as a class, becomes
its class here, importing the criterion module only then. No script imports another for its trainers.
"""
from __future__ import annotations

import importlib

from pruning.settings import ConfigError, TRAINERS, script_trainers, trainer_name


def trainer_class(trainer) -> type:
    """The class of `trainer`: a class as it is; a registered name ("magnitude", "dense", ...) imported from its
    module. Raises ConfigError for a name the registry does not hold, or a module that cannot be imported."""
    if isinstance(trainer, type):
        return trainer
    if trainer not in TRAINERS:
        raise ConfigError(f"unknown trainer {trainer!r}; choose one of {', '.join(TRAINERS)}")
    module, _, name = TRAINERS[trainer].partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"trainer {trainer!r} is registered as {TRAINERS[trainer]}, which cannot be imported "
                          f"({type(e).__name__}: {e}); is the toolkit's directory on the path?") from None


def trainers(namespace: dict | None = None) -> dict[str, type]:
    """Every trainer a run can use, by name, as classes: the registry's, then the script's own (`namespace`)."""
    found = {name: trainer_class(name) for name in TRAINERS}
    for name, cls in sorted(script_trainers(namespace or {}).items()):
        found.setdefault(name, cls)
    return found


def resolve(config: dict) -> dict:
    """`config` with its TRAINER (if any) as a class (`trainer_class`)."""
    return {**config, "TRAINER": trainer_class(config["TRAINER"])} if "TRAINER" in config else config


__all__ = ["resolve", "trainer_class", "trainer_name", "trainers"]
