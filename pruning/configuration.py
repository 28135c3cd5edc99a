"""A script's configuration: its upper-case constants, overridden as `--key=value` and type-checked;
the trainers a run can name; a grid script's own settings and the arguments it passes on; the
`PruningConfig` the constants describe.

The nanoGPT way: the constants at the top of bert.py (or any script) are the configuration, and
`--help` prints them with the comment after each.
"""
from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

from transformers import Trainer

from pruning.config import PruningConfig
from pruning.trainer import PruningTrainer


class ConfigError(ValueError):
    """Bad configuration; the message names the setting and how to fix it."""


def fail(error) -> None:
    """How every script refuses bad input: one line, `error: ...`, on standard error, and exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def trainers() -> dict[str, type]:
    """Every trainer a run can use, by name: the dense baseline and each PruningTrainer subclass that
    has been defined (imported by the script, or written in it) — no registry to edit."""
    found, todo = {}, list(PruningTrainer.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        found.setdefault(trainer_name(cls), cls)
    return {"dense": Trainer, **dict(sorted(found.items()))}


def trainer_name(trainer) -> str:
    """A trainer's name in configs and results: "dense" for transformers.Trainer, else its criterion's
    `name` (or the class name less "PruningTrainer", lower-cased). Raises ConfigError for anything else."""
    if trainer is Trainer:
        return "dense"
    if isinstance(trainer, type) and issubclass(trainer, PruningTrainer):
        name = trainer.criterion_class.name
        return name if name != "criterion" else trainer.__name__.removesuffix("PruningTrainer").lower()
    raise ConfigError(f"unknown TRAINER {trainer!r}: it must be transformers.Trainer (the dense baseline) or a "
                      "subclass of pruning.PruningTrainer")


def _parse_trainer(text: str):
    known = trainers()
    for name, cls in known.items():
        if text.lower() in (name, cls.__name__.lower()):
            return cls
    raise ConfigError(f"unknown trainer {text!r}; choose one of {', '.join(known)} "
                      f"(or the class names {', '.join(c.__name__ for c in known.values())})")


RATE_KEYS = ("PRUNING_RATE", "HEAD_RATE", "NEURON_RATE", "MLP_RATE", "LAYER_RATE")


def rate_value(key: str, value, where: str = ""):
    """A rate constant's value in its one form, whatever form it was written in: a float (one rate) or a
    tuple of floats (one per encoder layer). Accepts a number, a sequence of numbers, or text ("0.5",
    "0.3,0.6"), so a constant edited to per-layer rates still takes one number on the command line and
    the other way round. Raises ConfigError naming `key` (as `where` writes it) for anything else."""
    where = where or f"{key}={value!r}"
    try:
        if isinstance(value, str):
            parts = [t.strip() for t in value.split(",")]
            value = float(parts[0]) if len(parts) == 1 else tuple(float(t) for t in parts)
        elif isinstance(value, (list, tuple)):
            value = tuple(float(v) for v in value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = float(value)
        else:
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected a rate (a number) or one rate per encoder layer, comma-separated "
                          "(e.g. 0.5 or 0.3,0.4,0.5)") from None
    return value


def _parse_value(key: str, text: str, default):
    if key == "TRAINER":
        return _parse_trainer(text)
    if key in RATE_KEYS:  # one rule for every rate, whatever form its constant has
        return rate_value(key, text, f"--{key.lower()}={text!r}")
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"--{key.lower()}={text!r}: expected {type(default).__name__} "
                          f"(the default is {default!r})") from None
    return text


def _help_texts(script: str) -> dict[str, str]:
    """The comment after each `NAME = value  # comment` line of the script, for --help."""
    texts = {}
    for line in Path(script).read_text().splitlines():
        m = re.match(r"^([A-Z][A-Z0-9_]*)\s*=\s*.*?#\s*(.*)$", line)
        if m:
            texts[m.group(1)] = m.group(2)
    return texts


def configure(namespace: dict, argv: list[str] | None = None) -> dict:
    """The script's upper-case constants, with `--key=value` overrides applied and type-checked."""
    config = {k: v for k, v in namespace.items() if k.isupper() and not k.startswith("_")}
    for key in RATE_KEYS:  # the constants themselves take the same forms as their overrides
        if key in config:
            config[key] = rate_value(key, config[key])
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        script = namespace.get("__file__", "script.py")
        texts = _help_texts(script)
        print(f"usage: python {os.path.basename(script)} [--key=value ...]\n\nSettings (constants at the top of "
              f"{os.path.basename(script)}; override any of them on the command line):")
        for k, v in config.items():
            shown = trainer_name(v) if k == "TRAINER" else repr(v)
            print(f"  --{k.lower():<20} {shown:<28} {texts.get(k, '')}")
        raise SystemExit(0)
    for arg in argv:
        m = re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_]*)=(.*)", arg)
        if not m:
            raise ConfigError(f"cannot read argument {arg!r}: write overrides as --key=value, e.g. --pruning_rate=0.7")
        key, text = m.group(1).upper(), m.group(2)
        if key not in config:
            raise ConfigError(f"unknown setting --{key.lower()}; known settings: "
                              f"{', '.join('--' + k.lower() for k in config)}")
        config[key] = _parse_value(key, text, config[key])
    return config


def grid_settings(namespace: dict, names: tuple[str, ...], argv: list[str] | None = None,
                  owned: dict[str, str | None] | None = None) -> tuple[dict, list[str], dict]:
    """A grid script's own settings (its constants `names`, overridable as --key=value), the other
    arguments, which go to every run of the grid, and the namespace of the experiment script the grid
    runs (its SCRIPT). The passed-on arguments are checked against that script, so a typo fails at
    once instead of in every run. `owned` maps the run options the grid sets itself for each run
    (e.g. "--seed") to the grid setting to use instead (e.g. "--seeds"), or None: they are refused."""
    import runpy
    argv = sys.argv[1:] if argv is None else argv
    grid = os.path.basename(namespace.get("__file__", "the grid"))
    for arg in argv:
        key = arg.split("=")[0]
        if key in (owned or {}):
            instead = f"; set {owned[key]} instead" if owned[key] else ""
            raise ConfigError(f"{arg}: {grid} sets {key} for each of its runs{instead}")
    own = {f"--{k.lower()}" for k in names}
    mine = [a for a in argv if a.split("=")[0] in own or a in ("-h", "--help")]
    passed_on = [a for a in argv if a not in mine]
    config = configure({**{k: namespace[k] for k in names}, "__file__": namespace.get("__file__", "grid.py")}, mine)
    script = config["SCRIPT"]
    if not os.path.isfile(script):
        raise ConfigError(f"SCRIPT={script}: no such file; give the experiment script, e.g. bert.py")
    script_namespace = runpy.run_path(script)
    try:
        configure(script_namespace, passed_on)
    except ConfigError as e:
        raise ConfigError(f"{e}; or one of {grid}'s own: {', '.join(sorted(own))}") from None
    return config, passed_on, script_namespace


def criterion_options(config: dict) -> dict:
    """The criterion's own settings, by naming convention: constructor argument `epsilon` of the
    criterion named "undecayed" is the constant UNDECAYED_EPSILON (likewise SLIMMING_L1)."""
    trainer = config["TRAINER"]
    if not (isinstance(trainer, type) and issubclass(trainer, PruningTrainer)):
        return {}
    criterion = trainer.criterion_class
    names = list(inspect.signature(criterion.__init__).parameters)[2:]  # after self, units
    return {n: config[f"{criterion.name}_{n}".upper()] for n in names if f"{criterion.name}_{n}".upper() in config}


# Script constant -> PruningConfig field. A script without some of them (e.g. a copy of bert.py from
# before they existed) gets PruningConfig's defaults.
PRUNING_SETTINGS = {"GRANULARITY": "granularity", "PRUNING_RATE": "rate", "HEAD_RATE": "head_rate",
                    "NEURON_RATE": "neuron_rate", "MLP_RATE": "mlp_rate", "LAYER_RATE": "layer_rate", "THRESHOLD": "scope", "SEARCH_EPOCHS": "search_epochs",
                    "RETRAIN_EPOCHS": "retrain_epochs", "EB_CHECK_EVERY": "check_every", "EB_WINDOW": "window",
                    "EB_EPSILON": "epsilon", "EB_SKIP_WARMUP": "skip_warmup", "MASK_FROM": "mask_from",
                    "REWIND_TO": "rewind_to", "DISTILL_TEMPERATURE": "distill_temperature",
                    "DISTILL_HARDNESS": "distill_hardness", "GRADUAL_UPDATES": "gradual_updates",
                    "GRADUAL_START": "gradual_start", "GRADUAL_SPAN": "gradual_span", "GRADUAL_REWARM": "gradual_rewarm",
                    "DISTILL_HIDDEN": "distill_hidden", "DISTILL_LAYER_MAP": "distill_layer_map"}


def pruning_config(config: dict) -> PruningConfig:
    """The PruningConfig the script's constants describe (PRUNING_SETTINGS; missing ones take its
    defaults). Raises ValueError as PruningConfig does for invalid values."""
    return PruningConfig(**{field: config[key] for key, field in PRUNING_SETTINGS.items() if key in config},
                         distill=bool(config.get("TEACHER")), criterion_options=criterion_options(config),
                         teacher=config.get("TEACHER", "") if config.get("DISTILL_HIDDEN") else "")  # online teacher


def rate_text(rate) -> str:
    """A rate as text, 3 significant digits: "0.5", or per-layer rates joined by commas."""
    return ",".join(f"{x:.3g}" for x in rate) if isinstance(rate, (tuple, list)) else f"{rate:.3g}"


def describe(pruning: PruningConfig) -> str:
    """One line saying what is pruned: the rate(s) and scope, and the MASK_FROM source of a fixed mask."""
    if pruning.granularity == "weights":
        text = f"pruning rate {rate_text(pruning.rate)} ({pruning.scope})"
    else:
        text = (f"heads {rate_text(pruning.head_rate)} per layer, FFN neurons {rate_text(pruning.neuron_rate)} "
                f"({pruning.scope})")
        text += "".join(f", whole {kind}s {rate_text(pruning.rate_of(kind))}" for kind in pruning.whole_kinds)
    return text + (f", fixed mask from {pruning.mask_from}" if pruning.mask_from else "")
