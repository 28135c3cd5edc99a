"""The accuracy / speed / size frontier (issue 23): which pruned and quantized model pays where it runs.

    python frontier.py --train_subset=16000                    # MiniLM, 3 seeds, into sweeps/frontier
    python frontier.py --train_subset=16000 --agent_dir=sweeps/allocate-cost   # + the cost-aware agent's allocation
    python frontier.py --help

Points, each a heads+neurons ticket of CRITERION trained by SCRIPT (an ordinary bert.py run, one process
per run through `pruning.grid.loop` / `pruning.grid.cells`: finished runs skipped, killed ones resumed):
- "uniform": HEAD_RATE of each layer's heads and NEURON_RATE of the FFN neurons (EarlyBERT's 1/3, 0.4);
- AGGRESSIVE: (head rate, neuron rate, layer rate) tuples, whole encoder layers through LAYER_RATE;
- "agent" (AGENT_DIR): the per-layer head and neuron rates of a finished allocate.py search (its allocation.json);
each plain and (TRAINING "kd") distilled from the dense run of the same seed (bert.py's TEACHER), for every
seed in SEEDS, beside the dense run of each seed ("dense-sSEED");
- "speedX" for each X in SPEEDUPS (issue 36): speed_prune.py on the seed's finished dense run chooses the structure
  X times faster than dense in TARGET (latency table, Fisher importance; into OUT_DIR/select-speedX-sSEED), and
  that fine-tuned model is retrained SPEED_EPOCHS with the mask fixed, distilled from it with logits and hidden
  states (SPEED_DISTILL_HIDDEN): "speedX-kd-sSEED". E.g. the 3-seed frontier of issue 36:
      python frontier.py --speedups=1.5,2,2.5,3 --aggressive= --training=kd --variants=int8 --tolerance=1

Every finished pruned run is then compressed by compress.py in a process of its own (skipped when its
compressed/compress.json exists, made with these settings): VARIANTS in RUNTIME, against the seed's dense
run (--dense), timed at COMPRESS_BATCH_SIZE. compress.py times the dense model's deployments (PyTorch fp32, each
runtime's fp32 and int8) beside the point's, in the same sitting: speeds are compared as ratios to those
dense rows of the same sitting only, never across sittings. The dense point is the dense rows of the
first compressed point of its seed (the plan's order).

OUT_DIR/frontier.json holds every point and deployment (3-seed mean and std of the task's headline,
sentences/s and its ratios, bytes with and without the word embeddings), the Pareto frontiers and the
issue's targets; frontier.md their tables and verdicts; frontier_speed.png and frontier_bytes.png the plots.
Any --key=value that is not a setting below goes to every run (e.g. --train_subset=16000).
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import json
import sys
from fractions import Fraction
from pathlib import Path

from pruning.data.tasks import METRIC_TITLES
from pruning.grid import loop
from pruning.grid.cells import check_cells
from pruning.grid.processes import run_python
from pruning.run import checks, experiment, schema
from pruning.settings import ConfigError, fail, grid_settings, trainer_names
from pruning.studies import stats

SCRIPT = "bert.py"                 # the experiment every training uses
CRITERION = "slimming"             # the criterion of every pruned point (EarlyBERT's); the dense runs use Trainer
HEAD_RATE = 1 / 3                  # the "uniform" point: heads removed in each layer (EarlyBERT's default)
NEURON_RATE = 0.4                  # the "uniform" point: FFN neurons removed
AGGRESSIVE = [(0.5, 0.6, 0.0), (0.75, 0.8, 0.0), (0.5, 0.6, 1 / 3), (0.75, 0.8, 0.5)]  # (head, neuron, layer) rates; on the command line "h:n:l,h:n:l" (fractions like 1/3 allowed), "" = none
AGENT_DIR = ""                     # a finished allocate.py OUT_DIR: its allocation.json's per-layer rates are the "agent" point; "" = none
TRAINING = "plain,kd"              # each point plain and/or kd (distilled from the dense run of its seed)
SEEDS = "42,43,44"                 # one training of every point (and one dense run) per seed
VARIANTS = "fp32,int8,mixed"       # compress.py's variants whose rows are points of the frontier (fp32: PyTorch, ORT, OpenVINO)
RUNTIME = "auto"                   # compress.py's RUNTIME: auto (both timed), onnxruntime, openvino, both
COMPRESS_BATCH_SIZE = 64           # compress.py's BATCH_SIZE: sentences per batch of the throughput (--batch_size goes to the runs)
THREADS = 2                        # compress.py's THREADS: intra-op threads of every runtime
TOLERANCE = 1.5                    # points (x100) under the dense model's headline that still count as its accuracy
SPEEDUPS = ""                       # issue 36's points, e.g. "1.5,2,2.5,3": per seed, speed_prune.py on the dense run (the
                                   # structure SPEEDUP times faster than dense in TARGET) and that fine-tuned model retrained
                                   # with the mask fixed, distilled layer-wise from it; "" = none
TARGET = "openvino-int8"           # speed points: the deployment the latency table is measured in (speed_prune.py's TARGET)
SPEED_CRITERION = "fisher"         # speed points: the trainer that retrains them (the mask is fixed: it only records scores)
SPEED_DISTILL_HIDDEN = 1.0         # speed points: weight of the hidden-state MSE beside the logit term (bert.py's DISTILL_HIDDEN)
SPEED_EPOCHS = 1.0                 # speed points: epochs of retraining with the mask held (the dense run is the starting point)
LATENCY_CACHE = "~/.cache/earlybird-pruning/latency"  # speed points: where speed_prune.py keeps its latency tables
OUT_DIR = "sweeps/frontier"        # one sub-directory per run (compressed/ inside), frontier.json, frontier.md, plots
SETTINGS = ("SCRIPT", "CRITERION", "HEAD_RATE", "NEURON_RATE", "AGGRESSIVE", "AGENT_DIR", "TRAINING", "SEEDS",
            "VARIANTS", "RUNTIME", "COMPRESS_BATCH_SIZE", "THREADS", "TOLERANCE", "SPEEDUPS", "TARGET",
            "SPEED_CRITERION", "SPEED_DISTILL_HIDDEN", "SPEED_EPOCHS", "LATENCY_CACHE", "OUT_DIR")
TRAININGS = ("plain", "kd")
PRECISIONS = ("fp32", "int8", "mixed")
RUNTIMES = ("auto", "onnxruntime", "openvino", "both")
SPEED_TARGETS = {"vs_fastest_dense_int8": 2.0, "vs_dense_pytorch_fp32": 8.0}   # the speed target
SIZE_TARGET = 8.0                                                                # ... and its size target
# What the study sets for every run itself.
# (--head_rate and --neuron_rate are the study's own: the uniform point's rates.)
STUDY_OWNS = {"--seed": "--seeds", "--trainer": "--criterion", "--granularity": None, "--layer_rate": "--aggressive",
              "--mlp_rate": None, "--teacher": "--training=kd", "--run_name": None, "--resume": None,
              "--mask_from": "--speedups", "--distill_hidden": "--speed_distill_hidden"}


# --- settings and the plan -------------------------------------------------------------------------
def parse_speedups(value) -> list[float]:
    """SPEEDUPS ("1.5,2,3", a number, or "") -> [1.5, 2.0, 3.0]. Raises ConfigError for a value that is not a
    number >= 1."""
    if isinstance(value, (int, float)):
        value = str(value)
    out = []
    for part in (p.strip() for p in str(value).split(",") if p.strip()):
        try:
            x = float(part)
        except ValueError:
            x = 0.0
        if not x >= 1:
            raise ConfigError(f"--speedups={value}: each speed-up is a number >= 1 (times faster than dense), "
                              "comma-separated, e.g. 1.5,2,3")
        out.append(x)
    return list(dict.fromkeys(out))


def parse_rates(value) -> list[tuple[float, float, float]]:
    """AGGRESSIVE as (head rate, neuron rate, layer rate) tuples: the constant's list, or the command line's
    "h:n:l,h:n:l" (each a number or a fraction such as 1/3; "" = none). Raises ConfigError for anything else
    or a rate outside [0, 1)."""
    if isinstance(value, str):
        try:
            value = [tuple(float(Fraction(x.strip())) for x in item.split(":")) for item in value.split(",")
                     if item.strip()]
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"--aggressive={value!r}: give head:neuron:layer rates, comma-separated, "
                                         "e.g. 0.5:0.6:0,0.75:0.8:0.5") from None
    points = [tuple(float(r) for r in p) for p in value]
    for p in points:
        if len(p) != 3 or not all(0 <= r < 1 for r in p):
            raise ConfigError(f"AGGRESSIVE point {p}: give three rates (heads, neurons, layers), each in "
                                         "[0, 1)")
    return points


def point_name(head: float, neuron: float, layer: float) -> str:
    """A rate point's name: "h0.5-n0.6-l0.333" (3 significant digits each)."""
    return f"h{head:.3g}-n{neuron:.3g}-l{layer:.3g}"


def agent_rates(agent_dir: Path) -> dict[str, tuple[float, ...]]:
    """The per-layer rates of a finished allocate.py search, by bert.py setting ("HEAD_RATE", "NEURON_RATE", and
    "MLP_RATE" / "LAYER_RATE" (0 or 1 per layer) where the agent allocated whole MLPs or layers): allocation.json's
    "rates" (`pruning.studies.allocation.Budget.rates` of the agent's counts), mapped through allocate.py's RATE_KEY.
    Raises ConfigError when there is no allocation.json or it is not of heads+neurons."""
    import allocate
    path = Path(agent_dir) / "allocation.json"
    if not path.exists():
        raise ConfigError(f"--agent_dir={agent_dir}: no allocation.json there; run allocate.py "
                                     "--granularity=heads+neurons into it first, or set --agent_dir=''")
    rates = json.loads(path.read_text()).get("rates") or {}
    if not {"head", "neuron"} <= set(rates) <= {"head", "neuron", "mlp", "layer"}:
        raise ConfigError(f"{path}: the agent allocated {', '.join(sorted(rates)) or 'nothing'}; the "
                                     "frontier needs a heads+neurons allocation (head and neuron rates per layer)")
    return {allocate.RATE_KEY[kind]: tuple(float(r) for r in rs) for kind, rs in rates.items()}


def agent_source(agent_dir: Path) -> dict:
    """The settings of the run the agent searched on (allocation.json's "source", allocate.py's first
    uniform run: its run_config.json): {"MODEL", "HEAD_RATE", "NEURON_RATE"}, or {} when it is not there."""
    source = json.loads((Path(agent_dir) / "allocation.json").read_text()).get("source")
    path = Path(source) / "run_config.json" if source else None
    if path is None or not path.exists():
        return {}
    config = json.loads(path.read_text()).get("config", {})
    return {k: config.get(k) for k in ("MODEL", "HEAD_RATE", "NEURON_RATE")}


def points(config: dict) -> dict[str, dict]:
    """name -> settings of every pruned point: "uniform", the AGGRESSIVE ones, "agent" (with AGENT_DIR).
    Settings: allocation ("uniform", "aggressive", "agent"), head_rate, neuron_rate (a number, or per-layer
    tuples for the agent), layer_rate."""
    found = {"uniform": {"allocation": "uniform", "head_rate": config["HEAD_RATE"],
                         "neuron_rate": config["NEURON_RATE"], "layer_rate": 0.0}}
    for h, n, layer in parse_rates(config["AGGRESSIVE"]):
        found.setdefault(point_name(h, n, layer), {"allocation": "aggressive", "head_rate": h, "neuron_rate": n,
                                                   "layer_rate": layer})
    if config["AGENT_DIR"]:
        rates = agent_rates(Path(config["AGENT_DIR"]))
        found["agent"] = {"allocation": "agent", "head_rate": rates["HEAD_RATE"], "neuron_rate": rates["NEURON_RATE"],
                          "layer_rate": rates.get("LAYER_RATE", 0.0), "mlp_rate": rates.get("MLP_RATE", 0.0),
                          "agent_dir": config["AGENT_DIR"],
                          "searched_on": agent_source(Path(config["AGENT_DIR"]))}
    return found


def _rate_arg(key: str, rate) -> str:
    text = ",".join(repr(float(r)) for r in rate) if isinstance(rate, (tuple, list)) else repr(float(rate))
    return f"--{key}={text}"


def plan(config: dict, passed_on: list[str]) -> list[dict]:
    """Every training, the dense runs first (they teach the kd runs): dicts with name ("dense-s42",
    "uniform-s42", "uniform-kd-s42", ...), point, training ("dense", "plain", "kd"), seed, settings, teacher
    (the dense run's name or None) and args (bert.py's arguments, `passed_on` included)."""
    out = Path(config["OUT_DIR"])
    seeds = config["SEEDS"]
    cells = [{"name": f"dense-s{s}", "point": "dense", "training": "dense", "seed": s,
              "settings": {"allocation": "dense"}, "teacher": None,
              "args": ["--measure_speed=false", *passed_on, "--trainer=dense", f"--seed={s}"]} for s in seeds]
    for seed in seeds:
        for name, settings in points(config).items():
            for training in config["TRAINING"]:
                teacher = f"dense-s{seed}" if training == "kd" else None
                args = ["--measure_speed=false", *passed_on, f"--trainer={config['CRITERION']}", f"--seed={seed}",
                        "--granularity=heads+neurons", _rate_arg("head_rate", settings["head_rate"]),
                        _rate_arg("neuron_rate", settings["neuron_rate"]),
                        _rate_arg("layer_rate", settings["layer_rate"])]
                args += [_rate_arg("mlp_rate", settings["mlp_rate"])] if settings.get("mlp_rate") else []
                args += [f"--teacher={out / teacher}"] if teacher else []
                cells.append({"name": f"{name}{'-kd' if teacher else ''}-s{seed}", "point": name, "training": training,
                              "seed": seed, "settings": {**settings, "distilled": bool(teacher)}, "teacher": teacher,
                              "args": args})
        cells += [speed_cell(config, passed_on, seed, x) for x in config["SPEEDUPS"]]
    return cells


def speed_cell(config: dict, passed_on: list[str], seed: int, speedup: float) -> dict:
    """The training of one speed point (issue 36) for one seed: the seed's dense run (its model/) retrained for
    SPEED_EPOCHS with the fixed mask speed_prune.py chose for SPEEDUP in TARGET ("select": its OUT_DIR, made by
    `select` before the training), distilled from that dense run with logits and hidden states."""
    out = Path(config["OUT_DIR"])
    point, dense = f"speed{speedup:g}", out / f"dense-s{seed}"
    select = out / f"select-{point}-s{seed}"
    half = config["SPEED_EPOCHS"] / 2  # with MASK_FROM both phases train the fixed mask from step 0
    args = ["--measure_speed=false", *passed_on, f"--trainer={config['SPEED_CRITERION']}", f"--seed={seed}",
            "--granularity=heads+neurons", f"--model={dense / 'model'}", f"--mask_from={select}",
            f"--teacher={dense}", f"--distill_hidden={config['SPEED_DISTILL_HIDDEN']!r}",
            f"--search_epochs={half!r}", f"--retrain_epochs={half!r}"]
    return {"name": f"{point}-kd-s{seed}", "point": point, "training": "kd", "seed": seed,
            "settings": {"allocation": "speed", "speedup": speedup, "target": config["TARGET"], "distilled": True,
                         "distill_hidden": config["SPEED_DISTILL_HIDDEN"], "epochs": config["SPEED_EPOCHS"]},
            "teacher": f"dense-s{seed}", "args": args, "select": {"dir": str(select), "speedup": speedup}}


def select_args(config: dict, cell: dict) -> list[str]:
    """speed_prune.py's arguments for a speed cell: the seed's dense run, SPEEDUP, TARGET, timed as compress.py
    times (COMPRESS_BATCH_SIZE, THREADS), into the cell's selection directory."""
    dense = Path(config["OUT_DIR"]) / f"dense-s{cell['seed']}"
    return [f"--model={dense}", f"--speedup={cell['select']['speedup']!r}",
            f"--target={config['TARGET']}", f"--latency_batch_size={config['COMPRESS_BATCH_SIZE']}",
            f"--threads={config['THREADS']}", f"--latency_cache={config['LATENCY_CACHE']}",
            f"--out_dir={cell['select']['dir']}"]


def selected_differently(config: dict, cell: dict) -> str | None:
    """Why the selection on disk for a speed cell was made for another speedup, target or dense run (a
    sentence), or None when it matches or is not there."""
    path = Path(cell["select"]["dir"]) / "allocation.json"
    if not path.exists():
        return None
    made = json.loads(path.read_text()).get("settings", {})
    wanted = {"SPEEDUP": cell["select"]["speedup"], "TARGET": config["TARGET"],
              "MODEL": str(Path(config["OUT_DIR"]) / f"dense-s{cell['seed']}")}
    differ = [f"{k}: {made.get(k)!r} there, {v!r} now" for k, v in wanted.items() if made.get(k) != v]
    return f"{path} was made with other settings ({'; '.join(differ)})" if differ else None


def compress_args(config: dict, cell: dict) -> list[str]:
    """compress.py's arguments for one finished pruned run: VARIANTS (fp32 is always made), RUNTIME,
    COMPRESS_BATCH_SIZE (as its BATCH_SIZE), THREADS, and the seed's dense run as --dense."""
    out = Path(config["OUT_DIR"])
    extra = [v for v in config["VARIANTS"] if v != "fp32"]
    dense = out / f"dense-s{cell['seed']}"
    return [str(out / cell["name"]), f"--dense={dense}", f"--variants={','.join(extra)}",
            f"--runtime={config['RUNTIME']}", f"--batch_size={config['COMPRESS_BATCH_SIZE']}",
            f"--threads={config['THREADS']}"]


def compressed_differently(config: dict, cell: dict) -> str | None:
    """Why the compress.json on disk for `cell` was made with other settings than the study's now (a sentence),
    or None when it matches or is not there."""
    path = Path(config["OUT_DIR"]) / cell["name"] / "compressed" / "compress.json"
    if not path.exists():
        return None
    made = json.loads(path.read_text())["config"]
    wanted = {"VARIANTS": {v for v in config["VARIANTS"] if v != "fp32"}, "RUNTIME": config["RUNTIME"],
              "BATCH_SIZE": config["COMPRESS_BATCH_SIZE"], "THREADS": config["THREADS"],
              "DENSE": str(Path(config["OUT_DIR"]) / f"dense-s{cell['seed']}")}
    there = {"VARIANTS": {v for v in made["VARIANTS"].split(",") if v} - {"sparse"}, "RUNTIME": made["RUNTIME"],
             "BATCH_SIZE": made["BATCH_SIZE"], "THREADS": made["THREADS"], "DENSE": str(Path(made["DENSE"] or "."))}
    differ = [f"{k}: {there[k]!r} there, {wanted[k]!r} now" for k in wanted if there[k] != wanted[k]]
    return f"{path} was made with other settings ({'; '.join(differ)})" if differ else None


def settings(argv: list[str] | None = None) -> tuple[dict, list[str], list[dict]]:
    """The study's settings, the arguments passed on to every run, and the plan; every check before any work.
    Raises ConfigError naming the setting."""
    config, passed_on, script = grid_settings(globals(), SETTINGS, argv, owned=STUDY_OWNS)
    if config["CRITERION"] not in trainer_names(script) or config["CRITERION"] == "dense":
        raise ConfigError(f"unknown pruning criterion {config['CRITERION']!r}; choose from "
                          f"{', '.join(n for n in trainer_names(script) if n != 'dense')}")
    config["SEEDS"] = loop.seeds(config["SEEDS"])
    for key, allowed in (("TRAINING", TRAININGS), ("VARIANTS", PRECISIONS)):
        values = [v.strip() for v in config[key].split(",") if v.strip()]
        wrong = [v for v in values if v not in allowed]
        if wrong or not values:
            raise ConfigError(f"--{key.lower()}={config[key]}: give some of {', '.join(allowed)}, "
                                         "comma-separated")
        config[key] = values
    if config["RUNTIME"] not in RUNTIMES:
        raise ConfigError(f"--runtime={config['RUNTIME']}: choose one of {', '.join(RUNTIMES)}")
    for key in ("COMPRESS_BATCH_SIZE", "THREADS"):
        if config[key] < 1:
            raise ConfigError(f"--{key.lower()}={config[key]}: must be at least 1")
    if not config["TOLERANCE"] >= 0:
        raise ConfigError(f"--tolerance={config['TOLERANCE']}: points under dense, >= 0")
    config["SPEEDUPS"] = parse_speedups(config["SPEEDUPS"])
    if config["SPEEDUPS"]:
        from pruning.deploy.latency import TARGETS  # torch, numpy: only when speed points are asked for
        if config["TARGET"] not in TARGETS:
            raise ConfigError(f"--target={config['TARGET']}: choose one of {', '.join(TARGETS)}")
        if config["SPEED_CRITERION"] not in trainer_names(script) or config["SPEED_CRITERION"] == "dense":
            raise ConfigError(f"--speed_criterion={config['SPEED_CRITERION']}: choose a pruning criterion of "
                              f"{', '.join(n for n in trainer_names(script) if n != 'dense')}")
        if not config["SPEED_EPOCHS"] > 0 or not config["SPEED_DISTILL_HIDDEN"] >= 0:
            raise ConfigError(f"--speed_epochs={config['SPEED_EPOCHS']} must be > 0 and --speed_distill_hidden="
                              f"{config['SPEED_DISTILL_HIDDEN']} >= 0")
    config["AGGRESSIVE"] = parse_rates(config["AGGRESSIVE"])
    for key in ("HEAD_RATE", "NEURON_RATE"):
        if not 0 <= config[key] < 1:
            raise ConfigError(f"--{key.lower()}={config[key]}: a rate in [0, 1)")
    cells = plan(config, passed_on)
    searched = next((c["settings"]["searched_on"] for c in cells if c["point"] == "agent"), {})
    model = experiment.configure(script, passed_on)["MODEL"]
    if searched.get("MODEL") and str(searched["MODEL"]) != str(model):
        raise ConfigError(f"--agent_dir={config['AGENT_DIR']}: the agent allocated the layers of "
                                     f"{searched['MODEL']}, the runs train {model}: pass --model={searched['MODEL']}, "
                                     "or search with allocate.py on this model")
    for cell in cells:  # a teacher (and a speed point's model) is the dense run of the plan: checked once it has
        teacher = Path(config["OUT_DIR"]) / cell["teacher"] if cell["teacher"] else None  # finished; a speed
        trained = teacher is not None and (teacher / "results.json").exists()  # point's mask once it is selected
        later = ("--teacher=", "--model=") if cell.get("select") else ("--teacher=",)
        args = [a for a in cell["args"] if teacher is None or trained or not a.startswith(later)]
        if cell.get("select") and not (Path(cell["select"]["dir"]) / "masks.safetensors").exists():
            args = [a for a in args if not a.startswith("--mask_from=")]
        checks.validate(experiment.configure(script, args))
        why = selected_differently(config, cell) if cell.get("select") else None
        if why:
            raise ConfigError(f"{why}: run the study into another --out_dir, or delete that directory to select again")
    check_cells(config["SCRIPT"], Path(config["OUT_DIR"]), [(c["name"], c["args"]) for c in cells])
    for cell in cells:
        if cell["training"] != "dense":
            why = compressed_differently(config, cell)
            if why:
                raise ConfigError(f"{why}: run the study into another --out_dir, or delete that "
                                             "compressed/ directory to compress the run again")
    return config, passed_on, cells


# --- running ------------------------------------------------------------------------------------------
def train(config: dict, cells: list[dict]) -> list[str]:
    """Every training (`pruning.grid.loop.run_cells`: skipped when finished, resumed when killed); a kd run whose
    teacher failed is not started. Returns the names of the runs that failed or were not started."""
    teachers = {c["name"]: c["teacher"] for c in cells}
    skipped = []

    selections = {c["name"]: c for c in cells if c.get("select")}

    def before(name: str, failed: list[str]) -> bool:
        if teachers[name] in failed or teachers[name] in skipped:
            skipped.append(name)
            return False
        if name in selections and not select(config, selections[name]):
            skipped.append(name)
            return False
        return True
    failed = loop.run_cells(config["SCRIPT"], Path(config["OUT_DIR"]), [(c["name"], c["args"]) for c in cells],
                            "frontier", before)
    return failed + skipped


def select(config: dict, cell: dict) -> bool:
    """speed_prune.py for a speed cell, in a process of its own (output appended to OUT_DIR/select-...log), unless
    its masks are there; returns whether they are."""
    masks = Path(cell["select"]["dir"]) / "masks.safetensors"
    if not masks.exists():
        log = Path(config["OUT_DIR"]) / f"{Path(cell['select']['dir']).name}.log"
        script = Path(__file__).resolve().parent / "speed_prune.py"
        if run_python(script, select_args(config, cell), stdout=log) != 0:
            print(f"selecting the structure of {cell['name']} failed; see {log}", flush=True)
    return masks.exists()


def compress(config: dict, cells: list[dict], failed: list[str]) -> list[str]:
    """compress.py on every finished pruned run, each in a process of its own (output appended to
    OUT_DIR/NAME.compress.log), skipped when its compressed/compress.json exists; returns the names whose
    compression failed (or whose run or dense run did not finish)."""
    from tqdm import tqdm
    out = Path(config["OUT_DIR"])
    script = Path(__file__).resolve().parent / "compress.py"
    bad = []
    todo = [c for c in cells if c["training"] != "dense"]
    with tqdm(todo, desc="compress", unit="run") as bar:
        for cell in bar:
            bar.set_postfix_str(cell["name"])
            if cell["name"] in failed or f"dense-s{cell['seed']}" in failed:
                bad.append(cell["name"])
                continue
            if (out / cell["name"] / "compressed" / "compress.json").exists():
                continue
            if run_python(script, compress_args(config, cell), stdout=out / f"{cell['name']}.compress.log") != 0:
                bad.append(cell["name"])
                tqdm.write(f"compressing {cell['name']} failed; see {out / (cell['name'] + '.compress.log')}")
    return bad


# --- collecting ---------------------------------------------------------------------------------------
def sitting_figures(record: dict, label: str) -> dict:
    """One deployment's figures in one compress.json sitting: the headline metric, its difference to the
    sitting's dense PyTorch fp32 row, sentences/s, ratios to the dense PyTorch fp32 and to the fastest
    dense int8 row of the same sitting, bytes with and without the word embeddings, and the compression
    against compress.json's dense fp32 reference. Raises KeyError when the sitting has no dense int8 row."""
    headline = record["task"]["headline"]
    rows = record["variants"]
    v, dense = rows[label], rows["dense · PyTorch fp32"]
    int8 = {k: r for k, r in rows.items() if r["model"] == "dense" and r["precision"] == "int8"}
    fastest = max(int8, key=lambda k: int8[k]["sentences_per_s"])
    score, dense_score = v.get(headline), dense.get(headline)
    return {"headline": score, "dense_headline": dense_score,
            "headline_vs_dense": None if score is None or dense_score is None else score - dense_score,
            "sentences_per_s": v["sentences_per_s"], "latency_ms": v["latency_ms"],
            "vs_dense_pytorch_fp32": v["sentences_per_s"] / dense["sentences_per_s"],
            "vs_fastest_dense_int8": v["sentences_per_s"] / int8[fastest]["sentences_per_s"],
            "fastest_dense_int8": fastest, "dense_pytorch_sentences_per_s": dense["sentences_per_s"],
            "bytes": v["bytes"], "bytes_without_word_embeddings": v.get("bytes_without_word_embeddings"),
            "compression": v["compression"], "compression_reference": record.get("compression_reference"),
            "parameters": v["parameters"], "sitting": record["date"], "run": record["run"]}


def deployment_label(label: str) -> str:
    """compress.json's "pruned · ORT int8" or "dense · ORT int8" -> "ORT int8"."""
    return label.split(" · ", 1)[1]


def aggregate(per_seed: dict[int, dict]) -> dict:
    """A deployment over seeds: per_seed kept, and `pruning.studies.stats.summary` of each figure; the headline's paired
    t-test against the dense model of the same seeds (`pruning.studies.stats.paired_p`)."""
    seeds = sorted(per_seed)
    figures = ("headline", "headline_vs_dense", "sentences_per_s", "vs_dense_pytorch_fp32", "vs_fastest_dense_int8",
               "bytes", "bytes_without_word_embeddings", "compression")
    entry = {"seeds": seeds, "per_seed": {str(s): per_seed[s] for s in seeds}}
    entry.update({k: stats.summary([per_seed[s][k] for s in seeds]) for k in figures})
    pairs = [(per_seed[s]["headline"], per_seed[s]["dense_headline"]) for s in seeds
             if per_seed[s]["headline"] is not None and per_seed[s]["dense_headline"] is not None]
    entry["paired_p"] = stats.paired_p([a for a, _ in pairs], [b for _, b in pairs]) if pairs else None
    return entry


def collect(config: dict, cells: list[dict]) -> dict:
    """frontier.json's points from the compress.json files on disk: the dense point (the dense rows of the
    first compressed run of each seed, in the plan's order) and every pruned point x training, each with its
    deployments (VARIANTS' rows of its own model; the dense point: every dense row, fp32 and int8, which compress.py
    always makes). A point with no compressed run has no deployments."""
    out = Path(config["OUT_DIR"])
    records, task = {}, None
    for cell in cells:
        path = out / cell["name"] / "compressed" / "compress.json"
        if cell["training"] != "dense" and path.exists():
            records[cell["name"]] = json.loads(path.read_text())
            task = task or records[cell["name"]]["task"]
    groups: dict[str, dict] = {"dense": {"name": "dense", "point": "dense", "training": "dense",
                                         "settings": {"allocation": "dense"}, "runs": {}, "rows": {}}}
    for cell in cells:
        if cell["training"] == "dense":
            continue
        key = f"{cell['point']}{'-kd' if cell['training'] == 'kd' else ''}"
        g = groups.setdefault(key, {"name": key, "point": cell["point"], "training": cell["training"],
                                    "settings": cell["settings"], "runs": {}, "rows": {}})
        g["runs"][str(cell["seed"])] = str(out / cell["name"])
        record = records.get(cell["name"])
        if record is None:
            continue
        for label, v in record["variants"].items():
            if v.get("trimmed_vocabulary") or (v["model"] == "pruned" and v["precision"] not in config["VARIANTS"]):
                continue  # the dense deployments (fp32, int8) are always made: what a user would deploy instead
            target = g if v["model"] == "pruned" else groups["dense"]
            if v["model"] == "dense" and cell["seed"] in target["rows"].get(deployment_label(label), {}):
                continue  # the dense point: the first sitting of its seed
            if v["model"] == "dense":
                target["runs"].setdefault(str(cell["seed"]), str(out / f"dense-s{cell['seed']}"))
            target["rows"].setdefault(deployment_label(label), {})[cell["seed"]] = (
                {**sitting_figures(record, label), "runtime": v["runtime"], "precision": v["precision"]})
    found = []
    for g in groups.values():
        rows = g.pop("rows")
        g["deployments"] = {label: {"runtime": next(iter(per.values()))["runtime"],
                                    "precision": next(iter(per.values()))["precision"], **aggregate(per)}
                            for label, per in rows.items()}
        found.append(g)
    return {"task": task, "points": found}


# --- the frontier and the targets ------------------------------------------------------------------------
def candidates(found: dict) -> list[dict]:
    """Every (point, deployment) with a measured mean headline: flat dicts with name, deployment, headline,
    delta (mean headline vs dense, a fraction), the speed ratios, bytes, compression (means) and seeds."""
    rows = []
    for p in found["points"]:
        for label, d in p["deployments"].items():
            if d["headline"]["mean"] is None:
                continue
            rows.append({"name": p["name"], "deployment": label, "headline": d["headline"]["mean"],
                         "headline_std": d["headline"]["std"], "delta": d["headline_vs_dense"]["mean"],
                         "vs_dense_pytorch_fp32": d["vs_dense_pytorch_fp32"]["mean"],
                         "vs_fastest_dense_int8": d["vs_fastest_dense_int8"]["mean"],
                         "sentences_per_s": d["sentences_per_s"]["mean"], "bytes": d["bytes"]["mean"],
                         "bytes_without_word_embeddings": d["bytes_without_word_embeddings"]["mean"],
                         "compression": d["compression"]["mean"], "seeds": len(d["seeds"]),
                         "paired_p": d["paired_p"]})
    return rows


def pareto(items: list[dict], x: str, y: str = "headline", x_higher: bool = True) -> list[dict]:
    """The items no other item dominates: at least as good in `x` (higher, or lower with x_higher=False) and in
    `y` (higher), and better in one. Returned sorted by `x`, best last (so `y` falls along the list)."""
    sign = 1 if x_higher else -1

    def dominates(a, b):
        return (sign * a[x] >= sign * b[x] and a[y] >= b[y]) and (sign * a[x] > sign * b[x] or a[y] > b[y])
    front = [b for b in items if not any(dominates(a, b) for a in items if a is not b)]
    return sorted(front, key=lambda r: sign * r[x])


def _fig(c: dict, tolerance: float) -> str:
    return (f"{c['name']} · {c['deployment']}: Δ {100 * c['delta']:+.2f} points (limit −{tolerance:g}), "
            f"{c['vs_fastest_dense_int8']:.2f}× the fastest dense int8, {c['vs_dense_pytorch_fp32']:.2f}× dense "
            f"PyTorch fp32, {c['compression']:.2f}× smaller than dense fp32 ({c['seeds']} seed(s))")


def _target(items: list[dict], tolerance: float, meets, key: str, word: str) -> dict:
    """A target verdict: among deployments whose mean headline is at most `tolerance` points under dense, the best by
    `key` that `meets` (a predicate on a deployment); else "missed", naming the best by `key` overall and within the
    tolerance (`word`: "fastest" / "smallest"). {"verdict": "met" | "missed" | "not measured", "text", "best"}."""
    measured = [c for c in items if c["delta"] is not None]
    if not measured:
        return {"verdict": "not measured", "text": "no deployment with a measured headline", "best": None}
    within = [c for c in measured if c["delta"] >= -tolerance / 100]
    met = [c for c in within if meets(c)]
    if met:
        best = max(met, key=lambda c: c[key])
        return {"verdict": "met", "text": _fig(best, tolerance), "best": best}
    top = max(measured, key=lambda c: c[key])
    text = f"{word} overall: {_fig(top, tolerance)}"
    best = None
    if within:
        best = max(within, key=lambda c: c[key])
        text = (f"{word} within the tolerance: {_fig(best, tolerance)}" if best is top
                else f"{word} within the tolerance: {_fig(best, tolerance)}; {text}")
    else:
        text = f"no deployment within {tolerance:g} points of dense; {text}"
    return {"verdict": "missed", "text": text, "best": best}


def speed_target(items: list[dict], tolerance: float) -> dict:
    """The issue's speed target: a deployment >= 2x the fastest dense int8 deployment and >= 8x dense PyTorch
    fp32 (SPEED_TARGETS, each against the dense rows of its own sitting), its mean headline at most
    `tolerance` points under dense. {"verdict": "met" | "missed" | "not measured", "text", "best"}."""
    return _target(items, tolerance, lambda c: all(c[k] >= v for k, v in SPEED_TARGETS.items()),
                   "vs_fastest_dense_int8", "fastest")


def size_target(items: list[dict], tolerance: float) -> dict:
    """The issue's size target: a deployment >= 8x smaller on disk than dense fp32 (SIZE_TARGET, embeddings
    included) at the dense accuracy (mean headline at most `tolerance` points under). As speed_target."""
    return _target(items, tolerance, lambda c: c["compression"] >= SIZE_TARGET, "compression", "smallest")


def agent_target(items: list[dict], agent: str = "agent", uniform: str = "uniform") -> dict:
    """The issue's agent target: the cost-aware agent's allocation at least as fast as uniform (mean ratio to
    dense PyTorch fp32, each of its own sitting) at equal or better accuracy (mean headline), compared
    deployment by deployment (both plain, or both distilled). "met" when it holds in every deployment both
    have, "missed" in none, "mixed" otherwise; "not measured" without both points."""
    by = {(c["name"], c["deployment"]): c for c in items}
    pairs = [(by[(a, d)], by[(u, d)]) for a, u in ((agent, uniform), (f"{agent}-kd", f"{uniform}-kd"))
             for (n, d) in list(by) if n == a and (u, d) in by]
    if not pairs:
        return {"verdict": "not measured", "text": "no agent point (AGENT_DIR) beside the uniform point",
                "comparisons": []}
    rows = []
    for a, u in pairs:
        ok = a["vs_dense_pytorch_fp32"] >= u["vs_dense_pytorch_fp32"] and a["headline"] >= u["headline"]
        rows.append({"agent": a["name"], "deployment": a["deployment"], "met": ok,
                     "speed": (a["vs_dense_pytorch_fp32"], u["vs_dense_pytorch_fp32"]),
                     "headline": (a["headline"], u["headline"])})
    k = sum(r["met"] for r in rows)
    verdict = "met" if k == len(rows) else "missed" if k == 0 else "mixed"
    text = f"met in {k} of {len(rows)} deployments; " + "; ".join(
        f"{r['agent']} · {r['deployment']}: {r['speed'][0]:.2f}× vs {r['speed'][1]:.2f}× dense PyTorch fp32, "
        f"headline {r['headline'][0]:.4f} vs {r['headline'][1]:.4f}" for r in rows)
    return {"verdict": verdict, "text": text, "comparisons": rows}


def targets(items: list[dict], tolerance: float) -> list[dict]:
    """The three verdicts, each {"target", "verdict", "text"}: speed, size, agent."""
    return [{"target": f"speed: >= {SPEED_TARGETS['vs_fastest_dense_int8']:g}x the fastest dense int8 and >= "
                       f"{SPEED_TARGETS['vs_dense_pytorch_fp32']:g}x dense PyTorch fp32 at <= {tolerance:g} points "
                       "under dense", **speed_target(items, tolerance)},
            {"target": f"size: >= {SIZE_TARGET:g}x smaller on disk than dense fp32 (embeddings included) at the "
                       f"dense accuracy (<= {tolerance:g} points under)", **size_target(items, tolerance)},
            {"target": "agent: the cost-aware allocation at least as fast as uniform at equal or better accuracy",
             **agent_target(items)}]


# --- writing ------------------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    """frontier.md: the dense reference, the two Pareto frontiers' points in tables, the targets' verdicts,
    the points not measured, and the note on sittings."""
    task = result["task"] or {"title": "?", "headline": "headline"}
    title = METRIC_TITLES.get(task["headline"], task["headline"])
    tol = result["config"]["TOLERANCE"]
    dense = result["dense_headline"]
    lines = [f"# The accuracy / speed / size frontier: {task['title']}, dev {title}", "",
             f"`{result['command']}`; seeds {', '.join(map(str, result['config']['SEEDS']))}; compress.py "
             f"variants {', '.join(result['config']['VARIANTS'])}, runtime {result['config']['RUNTIME']}, batch "
             f"{result['config']['COMPRESS_BATCH_SIZE']}, {result['config']['THREADS']} threads.", "",
             f"Dense (PyTorch fp32, mean ± std over seeds): {stats.fmt(dense['mean'])}"
             + (f" ± {dense['std']:.4f}" if dense["std"] is not None else "") + f" ({dense['n']} seed(s)); "
             f"the tolerance line lies {tol:g} points under it.", "",
             "Speeds are only compared within a sitting: each compress.py run times its point beside the dense "
             "model's deployments, and every speed here is a ratio to the dense rows of that same sitting (dense "
             "PyTorch fp32, and the fastest dense int8 deployment of any runtime); sentences/s figures from "
             "different sittings are not comparable, and are shown only for orientation. Means over seeds; Δ is "
             "paired with the dense model of the same seed (p: paired t-test over seeds)."]
    header = ("| point | deployment | seeds | dev " + title + " | Δ vs dense (points) | p | sentences/s | "
              "× dense PyTorch fp32 | × fastest dense int8 | MB | MB w/o word emb. | × smaller than dense fp32 |")
    for key, what in (("speed", "speed (× dense PyTorch fp32 of the same sitting)"), ("bytes", "bytes on disk")):
        lines += ["", f"## Pareto frontier: {title} against {what}", "", header, "|---" * 12 + "|"]
        for c in result["frontier"][key]:
            without = c["bytes_without_word_embeddings"]
            lines.append(f"| {c['name']} | {c['deployment']} | {c['seeds']} | {c['headline']:.4f}"
                         + (f" ± {c['headline_std']:.4f}" if c["headline_std"] is not None else "")
                         + f" | {'–' if c['delta'] is None else format(100 * c['delta'], '+.2f')} | "
                         f"{stats.fmt(c['paired_p'], 3)} | {c['sentences_per_s']:.0f} | "
                         f"{c['vs_dense_pytorch_fp32']:.2f}× | "
                         f"{c['vs_fastest_dense_int8']:.2f}× | {c['bytes'] / 1e6:.1f} | "
                         f"{stats.fmt(None if without is None else without / 1e6, 1)} | "
                         f"{c['compression']:.2f}× |")
    lines += ["", "## Targets (issue 23)", ""]
    lines += [f"- **{t['verdict']}**: {t['target']}. {t['text']}." for t in result["targets"]]
    agent = next((p for p in result["points"] if p["point"] == "agent"), None)
    if agent:
        searched = agent["settings"].get("searched_on") or {}
        lines += ["", f"The agent point: the per-layer rates of `{agent['settings']['agent_dir']}/allocation.json`"
                      + (f", searched on a run of {searched.get('MODEL')} with heads {searched.get('HEAD_RATE')!r}, "
                         f"neurons {searched.get('NEURON_RATE')!r} (its uniform budget)" if searched else "")
                      + f"; the uniform point here removes heads {result['config']['HEAD_RATE']:.3g}, neurons "
                        f"{result['config']['NEURON_RATE']:.3g}."]
    missing = [p["name"] for p in result["points"] if not p["deployments"]]
    if missing:
        lines += ["", f"Not measured (no compressed run): {', '.join(missing)}."]
    return "\n".join(lines) + "\n"


def plots(result: dict, out: Path) -> None:
    """frontier_speed.png (headline x100 against the speed ratio to dense PyTorch fp32 of the same sitting,
    log scale) and frontier_bytes.png (against MB on disk, log scale): every deployment (colour: point, marker:
    precision, bars: std over seeds), the dense point starred, the dense - TOLERANCE line, the frontier drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    task = result["task"] or {"title": "?", "headline": "headline"}
    title = METRIC_TITLES.get(task["headline"], task["headline"])
    names = [p["name"] for p in result["points"]]
    colors = {n: plt.get_cmap("tab10")(i % 10) for i, n in enumerate(names)}
    markers = {"fp32": "o", "int8": "s", "mixed": "D"}
    dense = result["dense_headline"]["mean"]
    for key, xlabel, filename, scale in (
            ("vs_dense_pytorch_fp32", f"sentences/s at batch {result['config']['COMPRESS_BATCH_SIZE']}, × dense "
                                      "PyTorch fp32 of the same sitting", "frontier_speed.png", 1),
            ("bytes", "MB on disk (model files)", "frontier_bytes.png", 1e-6)):
        fig, ax = plt.subplots(figsize=(10, 5.5))
        seen = set()
        for p in result["points"]:
            for label, d in p["deployments"].items():
                if d["headline"]["mean"] is None:
                    continue
                x = d[key]["mean"] * scale
                dense_point = p["name"] == "dense"
                ax.errorbar(x, 100 * d["headline"]["mean"], yerr=100 * (d["headline"]["std"] or 0),
                            xerr=(d[key]["std"] or 0) * scale, fmt="*" if dense_point else markers.get(
                                d["precision"], "o"), color="black" if dense_point else colors[p["name"]],
                            markersize=13 if dense_point else 6, alpha=0.85, elinewidth=0.8,
                            label=None if p["name"] in seen else p["name"])
                seen.add(p["name"])
        front = result["frontier"]["speed" if key != "bytes" else "bytes"]
        if front:
            xs, ys = [c[key] * scale for c in front], [100 * c["headline"] for c in front]
            ax.plot(xs, ys, color="grey", linewidth=1, zorder=1)
            ax.scatter(xs, ys, s=220, facecolors="none", edgecolors="grey", zorder=1, label="Pareto frontier")
        if dense is not None:
            ax.axhline(100 * dense - result["config"]["TOLERANCE"], color="red", linestyle=":", linewidth=1,
                       label=f"dense − {result['config']['TOLERANCE']:g} points")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
        ax.set_xlabel(xlabel + " (log)")
        ax.set_ylabel(f"{task['title']} dev {title} (×100)")
        what = "speed" if key != "bytes" else "size"
        ax.set_title(f"{title} against {what} (★ dense; ○ fp32, □ int8, ◇ mixed)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
        fig.tight_layout()
        fig.savefig(out / filename, dpi=120)
        plt.close(fig)


def write(config: dict, cells: list[dict], command: str) -> dict:
    """Collect, find the frontiers and verdicts, and write frontier.json, frontier.md and the two plots into
    OUT_DIR (each file through a temporary file). Returns frontier.json's content."""
    out = Path(config["OUT_DIR"])
    found = collect(config, cells)
    items = candidates(found)
    dense = next(p for p in found["points"] if p["name"] == "dense")
    dense_row = dense["deployments"].get("PyTorch fp32")
    result = {"command": command, "config": {k: config[k] for k in SETTINGS}, "task": found["task"],
              "dense_headline": dense_row["headline"] if dense_row else {"mean": None, "std": None, "n": 0},
              "points": found["points"],
              "frontier": {"speed": pareto(items, "vs_dense_pytorch_fp32"),
                           "bytes": pareto(items, "bytes", x_higher=False)},
              "targets": targets(items, config["TOLERANCE"]),
              "note": "speeds are ratios to the dense rows of each point's own compress.py sitting"}
    schema.write_json(out / "frontier.json", result)
    text = markdown(result)
    tmp = out / "frontier.md.tmp"
    tmp.write_text(text)
    tmp.replace(out / "frontier.md")
    if items:
        plots(result, out)
    return result


def main(argv: list[str] | None = None) -> None:
    """Entry point: check everything, train every run (dense first), compress every finished pruned run, then
    write frontier.json, frontier.md and the plots. Bad settings exit with status 2; failed runs or
    compressions end in SystemExit naming them, after the report of what did finish."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, _, cells = settings(argv)
    except ConfigError as e:
        fail(e)
    Path(config["OUT_DIR"]).mkdir(parents=True, exist_ok=True)
    try:
        failed = train(config, cells)
    except ConfigError as e:
        fail(e)
    bad = compress(config, cells, failed)
    result = write(config, cells, " ".join(["python frontier.py", *argv]))
    print(markdown(result))
    print(f"written: {config['OUT_DIR']}/frontier.json, frontier.md, frontier_speed.png, frontier_bytes.png")
    loop.finish(sorted(set(failed) | set(bad)))


if __name__ == "__main__":
    main()
