"""A script's configuration, with no torch: its upper-case constants, overridden as `--key=value` and type-checked,
`--help`, the one-line error every script refuses bad settings with, a grid script's own settings, and the names of
the trainers a run can use (the registry `TRAINERS`; `pruning.run.trainers` turns a name into its class).

The nanoGPT way: the constants at the top of bert.py (or any script) are the configuration, and `--help` prints them
with the comment after each. This module imports the standard library only (an import-linter contract in
pyproject.toml), so every script answers `--help` and a bad setting in a fraction of a second.
"""
from __future__ import annotations

import ast
import os
import re
import runpy
import sys
from pathlib import Path


class ConfigError(ValueError):
    """Bad configuration; the message names the setting and how to fix it."""


def fail(error) -> None:
    """How every script refuses bad input: one line, `error: ...`, on standard error, and exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


# The trainer registry: name -> "module:Class", imported only when a run uses it (`pruning.run.trainers`). A
# PruningTrainer subclass written in the script itself (a copy of bert.py) is found in the script's namespace.
TRAINERS = {
    "dense": "transformers:Trainer",
    "activation": "activation_pruning:ActivationPruningTrainer",
    "fisher": "fisher_pruning:FisherPruningTrainer",
    "gradient": "gradient_pruning:GradientPruningTrainer",
    "magnitude": "magnitude_pruning:MagnitudePruningTrainer",
    "slimming": "slimming_pruning:SlimmingPruningTrainer",
    "undecayed": "undecayed_pruning:UndecayedPruningTrainer",
}


def register_trainer(name: str, path: str) -> None:
    """Add a trainer to the registry: `name` as configs and results write it, `path` as "module:Class" (imported
    when a run names it). Raises ConfigError for a name already taken by another class or a malformed path."""
    if not re.fullmatch(r"[\w.]+:\w+", path):
        raise ConfigError(f"trainer path {path!r}: write it as module:Class, e.g. my_pruning:MyPruningTrainer")
    if TRAINERS.get(name, path) != path:
        raise ConfigError(f"trainer name {name!r} is taken by {TRAINERS[name]}")
    TRAINERS[name] = path


def is_dense(trainer) -> bool:
    """Whether `trainer` is transformers.Trainer itself (the dense baseline), read off the class, without importing."""
    return isinstance(trainer, type) and trainer.__name__ == "Trainer" and trainer.__module__.startswith("transformers")


def trainer_name(trainer) -> str:
    """A trainer's name in configs and results: a registered name as it is; "dense" for transformers.Trainer; else the
    class's criterion `name` (or the class name less "PruningTrainer", lower-cased). Raises ConfigError otherwise."""
    if isinstance(trainer, str) and trainer in TRAINERS:
        return trainer
    if is_dense(trainer):
        return "dense"
    criterion = getattr(trainer, "criterion_class", None)
    if isinstance(trainer, type) and criterion is not None:
        name = getattr(criterion, "name", "criterion")
        return name if name != "criterion" else trainer.__name__.removesuffix("PruningTrainer").lower()
    raise ConfigError(f"unknown TRAINER {trainer!r}: it must be transformers.Trainer (the dense baseline), a "
                      f"registered name ({', '.join(TRAINERS)}) or a subclass of pruning.PruningTrainer")


def script_trainers(namespace: dict) -> dict[str, type]:
    """The PruningTrainer subclasses a script's namespace holds (written in it or imported by it), by name."""
    return {trainer_name(v): v for v in namespace.values()
            if isinstance(v, type) and getattr(v, "criterion_class", None) is not None and v.__name__ != "PruningTrainer"}


def trainer_names(namespace: dict | None = None) -> list[str]:
    """Every trainer a run can name: the registry's, then those of the script's namespace."""
    return list(dict.fromkeys([*TRAINERS, *sorted(script_trainers(namespace or {}))]))


def _parse_trainer(text: str, namespace: dict):
    """A TRAINER given as text: a registered name or class name (a name string), or a class of the script's own."""
    own = script_trainers(namespace)
    for name, cls in own.items():
        if text.lower() in (name, cls.__name__.lower()):
            return cls
    for name, path in TRAINERS.items():
        if text.lower() in (name, path.split(":")[1].lower()):
            return name
    raise ConfigError(f"unknown trainer {text!r}; choose one of {', '.join(trainer_names(namespace))} "
                      f"(or the class names {', '.join(p.split(':')[1] for p in TRAINERS.values())})")


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


def rate_text(rate) -> str:
    """A rate as text, 3 significant digits: "0.5", or per-layer rates joined by commas."""
    return ",".join(f"{x:.3g}" for x in rate) if isinstance(rate, (tuple, list)) else f"{rate:.3g}"



def text_columns(config: dict) -> tuple[str, ...]:
    """TEXT_COLUMNS as a tuple: "text" -> ("text",), "sentence1,sentence2" -> a pair."""
    return tuple(c.strip() for c in str(config.get("TEXT_COLUMNS", "")).split(",") if c.strip())


def _parse_value(key: str, text: str, default, namespace: dict):
    if key == "TRAINER":
        return _parse_trainer(text, namespace)
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
        _print_help(namespace.get("__file__", "script.py"),
                    {k: trainer_name(v) if k == "TRAINER" else repr(v) for k, v in config.items()})
        raise SystemExit(0)
    for arg in argv:
        m = re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_]*)=(.*)", arg)
        if not m:
            raise ConfigError(f"cannot read argument {arg!r}: write overrides as --key=value, e.g. --pruning_rate=0.7")
        key, text = m.group(1).upper(), m.group(2)
        if key not in config:
            raise ConfigError(f"unknown setting --{key.lower()}; known settings: "
                              f"{', '.join('--' + k.lower() for k in config)}")
        config[key] = _parse_value(key, text, config[key], namespace)
    return config


def grid_settings(namespace: dict, names: tuple[str, ...], argv: list[str] | None = None,
                  owned: dict[str, str | None] | None = None) -> tuple[dict, list[str], dict]:
    """A grid script's own settings (its constants `names`, overridable as --key=value), the other
    arguments, which go to every run of the grid, and the namespace of the experiment script the grid
    runs (its SCRIPT). The passed-on arguments are checked against that script, so a typo fails at
    once instead of in every run. `owned` maps the run options the grid sets itself for each run
    (e.g. "--seed") to the grid setting to use instead (e.g. "--seeds"), or None: they are refused."""
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


def _source_constants(script: str) -> dict[str, tuple[object, str]]:
    """The upper-case constants of a script's source, without running it: name -> (value, shown). A literal (or
    arithmetic on literals, e.g. 1 / 3) is evaluated; a class name is shown as its registered trainer name."""
    tree = ast.parse(Path(script).read_text())
    by_class = {path.split(":")[1]: name for name, path in TRAINERS.items()}
    constants = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        key = node.targets[0].id
        if not key.isupper() or key.startswith("_"):
            continue
        try:
            value = ast.literal_eval(node.value)
        except ValueError:
            if all(isinstance(n, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.operator, ast.unaryop))
                   for n in ast.walk(node.value)):
                value = eval(compile(ast.Expression(node.value), script, "eval"), {"__builtins__": {}})
            else:
                value = None
        source = ast.get_source_segment(Path(script).read_text(), node.value) or ""
        shown = by_class.get(source, source) if value is None else repr(value)
        constants[key] = (value, shown)
    return constants


def _print_help(script: str, shown: dict[str, str]) -> None:
    texts = _help_texts(script)
    print(f"usage: python {os.path.basename(script)} [--key=value ...]\n\nSettings (constants at the top of "
          f"{os.path.basename(script)}; override any of them on the command line):")
    for k, v in shown.items():
        print(f"  --{k.lower():<20} {v:<28} {texts.get(k, '')}")


def preflight(script: str, argv: list[str] | None = None, check: bool = False) -> None:
    """Answer `--help`, and with `check` refuse a setting the script does not have or a value of the wrong type,
    from the script's source alone: called at the top of a script, before it imports torch, so both take a fraction
    of a second. Exits 0 after the help and 2 (`fail`) on a bad setting; returns otherwise. `check` is for scripts
    that take only `--key=value` settings of their own (a grid script passes other settings on to its runs)."""
    argv = sys.argv[1:] if argv is None else argv
    constants = _source_constants(script)
    if any(a in ("-h", "--help") for a in argv):
        _print_help(script, {k: shown for k, (_, shown) in constants.items()})
        raise SystemExit(0)
    if not check:
        return
    try:
        for arg in argv:
            m = re.fullmatch(r"--([A-Za-z_][A-Za-z0-9_]*)=(.*)", arg)
            if not m:
                raise ConfigError(f"cannot read argument {arg!r}: write overrides as --key=value, e.g. --pruning_rate=0.7")
            key = m.group(1).upper()
            if key not in constants:
                raise ConfigError(f"unknown setting --{key.lower()}; known settings: "
                                  f"{', '.join('--' + k.lower() for k in constants)}")
            default = constants[key][0]
            if key != "TRAINER" and default is not None:  # a trainer may be a class of the script's own
                _parse_value(key, m.group(2), default, {})
    except ConfigError as e:
        fail(e)

