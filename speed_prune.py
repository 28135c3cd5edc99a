"""Speed as the setting (issue 36): the structure of a fine-tuned model that runs SPEEDUP times faster than the
dense model in TARGET, chosen by importance under a measured latency budget, and the commands that train it.

    python speed_prune.py --model=runs/DENSE --speedup=2 --target=openvino-int8   # allocation into OUT_DIR
    python speed_prune.py --model=runs/DENSE --select=false                        # the layer scores only
    python speed_prune.py --model=runs/DENSE --table_only=true --table_width_step=8  # a table for the rounding question
    python speed_prune.py --help

Steps (each one function of the toolkit):
1. importance on SAMPLE training examples of the fine-tuned MODEL (a finished dense run): the diagonal empirical
   Fisher information of per-example gates on every head, FFN neuron, whole MLP and whole layer, and each layer's
   block influence, in one pass (`pruning.core.whole_scores.gate_fisher`); the loss increase of dropping each layer
   alone on HELD_OUT other training examples (`whole_scores.drop_loss`); and, beside them, the dev accuracy of each
   layer dropped (no retraining) and the toolkit's older whole-layer score (`PrunableUnits.whole_scores` of the
   magnitude criterion's scores). Written to OUT_DIR/layer_scores.json and .md: the comparison of layer rules.
2. the latency table of MODEL's architecture in TARGET (`pruning.deploy.latency.cached_table`: measured once per machine,
   runtime version, architecture, sequence length, batch size and thread count, cached in LATENCY_CACHE), at the
   deployment's length: the dev split served in batches of LATENCY_BATCH_SIZE, each padded to its longest;
3. the structure of least estimated loss within dense latency / SPEEDUP (`pruning.deploy.latency.choose`: a dynamic
   programme over each layer's options: heads 1..H, FFN width in multiples of WIDTH_MULTIPLE or the MLP removed,
   or the layer removed; a unit's loss is half its Fisher information, Kwon et al.'s estimate; a whole MLP's half
   its gate's; a layer's its LAYER_SCORE), on the table as TABLE_FIT reads it (least-squares lines in heads and
   width by default: one probe's timing is noisy). The last layer of a
   first-token classifier is never removed. STRUCTURE=uniform: the same heads and width in every layer instead
   (EarlyBERT's uniform rates at the same budget: the ablation of the per-layer choice).
Writes OUT_DIR/allocation.json ("rates": per-layer HEAD_RATE, NEURON_RATE, MLP_RATE, LAYER_RATE, which
frontier.py's --agent_dir reads as a point; the structure, predicted and dense milliseconds, the table's record)
and OUT_DIR/masks.safetensors (the keep-masks of that structure by Fisher information, for bert.py's MASK_FROM),
and prints the two commands that train it: the early-bird run with these per-layer rates, and the fine-tuned model
with this fixed mask, retrained with layer-wise distillation from the dense model.
"""
from __future__ import annotations

from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import json
import time
from pathlib import Path

import torch
from datasets import DatasetDict
from transformers import DataCollatorWithPadding

import prune_finetuned as pf
from pruning import settings
from pruning.core.units import PrunableUnits, protected_layers
from pruning.core.whole_scores import WholeGates, drop_loss, gate_fisher
from pruning.data import loading, models
from pruning.deploy import latency
from pruning.run import experiment
from pruning.studies import retraining_free as rf

MODEL = ""                        # a finished dense run (runs/NAME: a fine-tuned classifier, its task and data)
TOKENIZER = ""                    # "" = the run's
TASK = ""                         # "" = the run's task
DATA_DIR = ""                     # "" = the run's
TEXT_COLUMNS = "text"             # custom tasks: as bert.py's
LABEL_COLUMN = "label"            # custom tasks: as bert.py's
MAX_LENGTH = 128                  # tokens kept per example
SAMPLE = 2000                     # training examples (seeded) for the Fisher information and block influence
HELD_OUT = 1000                   # other training examples (seeded) for the loss of dropping each layer
BATCH_SIZE = 32                   # sentences per batch of those passes
SEED = 0                          # draws both samples
# --- the budget
SPEEDUP = 2.0                     # the pruned model's latency is at most the dense model's / SPEEDUP in TARGET
TARGET = "openvino-int8"          # openvino-int8, onnxruntime-int8 or pytorch-fp32
LATENCY_BATCH_SIZE = 64           # sentences per timed batch (compress.py's BATCH_SIZE)
THREADS = 2                       # intra-op threads of the runtime (compress.py's THREADS)
SEQ_LEN = 0                       # tokens per timed sentence; 0 = the deployment's: the dev split in batches of
                                  # LATENCY_BATCH_SIZE, each padded to its longest (as compress.py times it), mean, to 8
WIDTH_MULTIPLE = 32               # FFN widths the selection may choose: multiples of this (and 0, the dense width)
TABLE_WIDTH_STEP = 64             # FFN widths the table measures (linear in between); 8 or 1 to study rounding
TABLE_FIT = "linear"              # how the selection reads the table: "linear" (least-squares lines in heads and width),
                                  # "monotone" (isotonic) or "raw" (each probe as timed)
STRUCTURE = "table"               # "table": per-layer heads, widths and layers (the DP); "uniform": the same heads
                                  # and width in every layer (EarlyBERT's uniform rates) within the same budget
LAYER_SCORE = "drop_loss"         # a layer's loss when removed: "drop_loss" (measured) or "fisher" (half its gate's)
LATENCY_CACHE = "~/.cache/earlybird-pruning/latency"  # where tables are kept (one file per family/target/length/...)
SELECT = True                     # steps 2-3; False: the layer scores only
TABLE_ONLY = False                # step 2 only (and the rounding report), no importance
# --- output
OUT_DIR = "sweeps/speed"          # allocation.json, masks.safetensors, layer_scores.json/.md

_PF_KEYS = ("MODEL", "TOKENIZER", "TASK", "DATA_DIR", "TEXT_COLUMNS", "LABEL_COLUMN", "MAX_LENGTH", "SAMPLE",
           "BATCH_SIZE", "SEED")
_LAYER_SCORES = ("drop_loss", "fisher")


def check(config: dict) -> dict:
    """Every setting, before any work (one ConfigError naming it); then prune_finetuned.py's checks of the model and
    task. Returns prune_finetuned's resolved inputs."""
    if not config["SPEEDUP"] >= 1:
        raise settings.ConfigError(f"--speedup={config['SPEEDUP']}: the pruned model must be at least as fast, >= 1")
    if config["TARGET"] not in latency.TARGETS:
        raise settings.ConfigError(f"--target={config['TARGET']}: choose one of {', '.join(latency.TARGETS)}")
    if config["TABLE_FIT"] not in latency.FITS:
        raise settings.ConfigError(f"--table_fit={config['TABLE_FIT']}: choose one of {', '.join(latency.FITS)}")
    if config["STRUCTURE"] not in ("table", "uniform"):
        raise settings.ConfigError(f"--structure={config['STRUCTURE']}: choose table (per layer) or uniform")
    if config["LAYER_SCORE"] not in _LAYER_SCORES:
        raise settings.ConfigError(f"--layer_score={config['LAYER_SCORE']}: choose one of {', '.join(_LAYER_SCORES)}")
    for key, least in (("LATENCY_BATCH_SIZE", 1), ("THREADS", 1), ("SEQ_LEN", 0), ("WIDTH_MULTIPLE", 1),
                       ("TABLE_WIDTH_STEP", 1), ("HELD_OUT", 1)):
        if config[key] < least:
            raise settings.ConfigError(f"--{key.lower()}={config[key]}: must be at least {least}")
    return pf.check(pf_config(config))


def pf_config(config: dict) -> dict:
    """prune_finetuned.py's configuration with this script's shared settings (its own defaults for the rest)."""
    defaults = {k: v for k, v in vars(pf).items() if k.isupper() and not k.startswith("TASK_")}
    return {**defaults, **{k: config[k] for k in _PF_KEYS}, "RETRAIN_EPOCHS": 0.0}


def layer_comparison(model, units, task, batches, held_out, dev) -> dict:
    """Every layer rule on this model, per layer (dense order): Fisher of the layer gate, block influence, drop loss
    on the held-out sample, dev accuracy with the layer dropped (no retraining), and the older rule (magnitude scores
    through `PrunableUnits.whole_scores`); plus the Fisher information of every unit for the selection."""
    started = time.perf_counter()
    fisher, bi = gate_fisher(model, units, batches)
    seconds = {"fisher": time.perf_counter() - started}
    started = time.perf_counter()
    dropped = drop_loss(model, units, held_out)
    seconds["drop_loss"] = time.perf_counter() - started
    accuracy = []
    for layer in units.live_layers():
        with WholeGates(units, ("layer",)) as gates:
            gates.masks = {}  # the layer's gate at 0 for every example: the layer is skipped
            metrics = []
            for b in dev:
                n = b["input_ids"].shape[0]
                m = torch.ones(n, len(units.live_layers()))
                m[:, units.live_layers().index(layer)] = 0
                gates.masks = {f"{units.prefix}.layers": m}
                with torch.no_grad():
                    metrics.append((model(**{k: v for k, v in b.items() if k != "labels"}).logits, b["labels"]))
        logits, labels = torch.cat([m[0] for m in metrics]), torch.cat([m[1] for m in metrics])
        accuracy.append(float(task.score(task.predictions(logits.numpy()), labels.numpy())[task.headline]))
    older = older_layer_score(model)
    protected = protected_layers(units)
    layers = units.live_layers()
    rows = [{"layer": layer, "fisher": float(fisher.diagonal[f"{units.prefix}.layers"][j]),
             "block_influence": float(bi[layer]), "drop_loss": float(dropped[layer]),
             "dev_headline_dropped": accuracy[j],
             "older_score_magnitude": float(older[j]),
             "protected": layer in protected} for j, layer in enumerate(layers)]
    lowest = {key: min((r for r in rows if not r["protected"]), key=lambda r: r[key])["layer"]
              for key in ("fisher", "block_influence", "drop_loss")}
    lowest["older_score_magnitude (no protection)"] = min(rows, key=lambda r: r["older_score_magnitude"])["layer"]
    lowest["dev_headline_dropped (highest)"] = max(rows, key=lambda r: r["dev_headline_dropped"])["layer"]
    return {"rows": rows, "lowest_by_rule": lowest, "seconds": seconds, "fisher": fisher, "headline": task.headline}


def older_layer_score(model) -> list[float]:
    """The whole-layer score the toolkit used before issue 36, on the magnitude criterion's scores: a layer's heads'
    summed score over the mean of those sums across layers, plus the same for its FFN neurons (no layer protected)."""
    from magnitude_pruning import MagnitudeCriterion
    units = PrunableUnits(model, "heads+neurons")
    scores = MagnitudeCriterion(units).scores()
    sums = {"head": {}, "neuron": {}}
    for n, g in units.groups.items():
        sums[g.kind][g.layer] = float(scores[n].sum())
    layers = sorted(sums["head"])
    mean = {k: sum(v.values()) / len(v) for k, v in sums.items()}
    return [sums["head"][i] / mean["head"] + sums["neuron"][i] / mean["neuron"] for i in layers]


def importance(units, fisher, dropped_rows, layer_score: str) -> list[latency.LayerImportance]:
    """One `latency.LayerImportance` per live layer: half the Fisher information of each head and neuron (Kwon et al.'s
    estimate of the loss increase), half the whole MLP's gate's, and the layer's LAYER_SCORE (drop loss clamped at 0,
    or half its gate's Fisher)."""
    out = []
    d = fisher.diagonal
    for j, layer in enumerate(units.live_layers()):
        row = dropped_rows[j]
        layer_loss = max(0.0, row["drop_loss"]) if layer_score == "drop_loss" else row["fisher"] / 2
        out.append(latency.LayerImportance(d[f"{units.prefix}.{layer}.heads"] / 2, d[f"{units.prefix}.{layer}.neurons"] / 2,
                                           mlp=float(d[f"{units.prefix}.mlps"][j]) / 2, layer=layer_loss))
    return out


def keep_masks(units, fisher, structure) -> dict[str, torch.Tensor]:
    """Keep-masks of `structure` over the dense model's groups: each layer's h heads and w neurons of greatest Fisher
    information, its MLP (w > 0) and the layer itself (not None)."""
    keep = {}
    for n, g in units.mask_groups.items():
        keep[n] = torch.zeros(g.size, dtype=torch.bool)
    for j, option in enumerate(structure):
        if option is None:
            continue
        h, w = option
        heads, neurons = f"{units.prefix}.{j}.heads", f"{units.prefix}.{j}.neurons"
        keep[heads][fisher.diagonal[heads].argsort(descending=True)[:h]] = True
        keep[neurons][fisher.diagonal[neurons].argsort(descending=True)[:w]] = True
        keep[f"{units.prefix}.mlps"][j] = w > 0
        keep[f"{units.prefix}.layers"][j] = True
    return keep


def markdown(comparison: dict) -> str:
    head = comparison["headline"]
    lines = [f"| layer | Fisher of its gate | block influence | drop loss (HELD_OUT other train sentences) | dev {head} dropped | "
             "older score (magnitude, as before issue 36) | protected now |", "|---|---|---|---|---|---|---|"]
    for r in comparison["rows"]:
        older = f"{r['older_score_magnitude']:.3f}"
        lines.append(f"| {r['layer']} | {r['fisher']:.4g} | {r['block_influence']:.4f} | {r['drop_loss']:+.4f} | "
                     f"{r['dev_headline_dropped']:.4f} | {older} | {'yes' if r['protected'] else ''} |")
    lines.append("")
    lines.append("lowest (first to go) by rule: " + ", ".join(f"{k}: layer {v}" for k, v in comparison["lowest_by_rule"].items()))
    return "\n".join(lines) + "\n"


def main(config: dict) -> dict:
    inputs = check(config)
    out = Path(config["OUT_DIR"])
    task, model, tokenizer, description, encoded, _ = pf.load_inputs(pf_config(config), inputs)
    collate = DataCollatorWithPadding(tokenizer)
    batches = rf.sample_batches(loading.model_rows(encoded["train"]), collate, config["BATCH_SIZE"])
    seq_len = config["SEQ_LEN"] or latency.deployment_length(list(encoded[task.dev]["length"]),
                                                              config["LATENCY_BATCH_SIZE"])
    units = PrunableUnits(model, "heads+neurons", ("mlp", "layer"))
    result = {"model": inputs["source"], "description": description, "settings": {k: config[k] for k in config
                                                                                   if k.isupper()}}
    if not config["TABLE_ONLY"]:
        held_rows = loading.model_rows(loading.tokenize(DatasetDict({"train": loading.subset(
            loading.load(**loading.run_task(inputs["settings"]))[1]["train"], config["HELD_OUT"], config["SEED"] + 1)}),
            tokenizer, config["MAX_LENGTH"], task)["train"])
        held_out = rf.sample_batches(held_rows, collate, config["BATCH_SIZE"])
        dev = rf.sample_batches(loading.model_rows(encoded[task.dev]), collate, 64)
        comparison = layer_comparison(model, units, task, batches, held_out, dev)
        fisher = comparison.pop("fisher")
        out.mkdir(parents=True, exist_ok=True)
        (out / "layer_scores.json").write_text(json.dumps(comparison, indent=1))
        (out / "layer_scores.md").write_text(markdown(comparison))
        print(markdown(comparison))
        result["layer_scores"] = comparison
    if not (config["SELECT"] or config["TABLE_ONLY"]):
        return result
    table, how = latency.cached_table(model, config["TARGET"], seq_len, config["LATENCY_BATCH_SIZE"], config["THREADS"],
                                      config["TABLE_WIDTH_STEP"], Path(config["LATENCY_CACHE"]).expanduser(),
                                      progress=lambda: print(".", end="", flush=True))
    print(f"\nlatency table ({config['TARGET']}, {seq_len} tokens x {config['LATENCY_BATCH_SIZE']}, "
          f"{config['THREADS']} threads): {how}; measured {table.meta['measured_at']} on {table.meta['cpu']}")
    result["table"] = {"how": how, **table.to_json()}
    if config["TABLE_ONLY"]:
        result["rounding"] = latency.rounding_report(table)
        print(json.dumps(result["rounding"], indent=1))
        return result
    imp = importance(units, fisher, comparison["rows"], config["LAYER_SCORE"])
    H, I = len(imp[0].heads), len(imp[0].neurons)
    live = units.live_layers()
    sel = latency.choose(table, imp, config["SPEEDUP"], config["WIDTH_MULTIPLE"],
                         protected=[live.index(layer) for layer in protected_layers(units)],
                         fit=config["TABLE_FIT"], uniform=config["STRUCTURE"] == "uniform")
    rates = latency.structure_rates(sel.structure, H, I)
    keep = keep_masks(units, fisher, sel.structure)
    pf.write_masks(out, keep, {n: s for n, s in fisher.diagonal.items() if n in units.groups}, description)
    dense_ms = table.fitted(config["TABLE_FIT"]).latency([(H, I)] * len(imp))  # as the selection priced it
    allocation = {"rates": {"head": rates["HEAD_RATE"], "neuron": rates["NEURON_RATE"], "mlp": rates["MLP_RATE"],
                            "layer": rates["LAYER_RATE"]},
                  "structure": [None if o is None else list(o) for o in sel.structure],
                  "predicted_ms": sel.latency_ms, "dense_ms": dense_ms, "budget_ms": sel.budget_ms,
                  "predicted_speedup": dense_ms / sel.latency_ms, "estimated_loss": sel.loss,
                  "source": str(Path(config["MODEL"]).resolve()), **result}
    (out / "allocation.json").write_text(json.dumps(allocation, indent=1, default=str))
    per_layer = " ".join(f"--{k.lower()}={','.join(repr(float(r)) for r in v)}" for k, v in rates.items())
    print(f"structure (heads, FFN width) per layer: {allocation['structure']}; predicted {sel.latency_ms:.2f} ms "
          f"of {dense_ms:.2f} ({dense_ms / sel.latency_ms:.2f}x)")
    print(f"early-bird run with these per-layer counts:\n  python bert.py --granularity=heads+neurons --trainer=fisher "
          f"{per_layer} --teacher={config['MODEL']} --distill_hidden=1.0")
    print(f"the fine-tuned model with this fixed mask, distilled layer-wise from it:\n  python bert.py "
          f"--model={inputs['source']} --granularity=heads+neurons --trainer=fisher --mask_from={out} "
          f"--teacher={config['MODEL']} --distill_hidden=1.0")
    print(f"3 seeds as a frontier point: python frontier.py --agent_dir={out} --criterion=fisher --aggressive= "
          f"--training=kd --distill_hidden=1.0")
    return allocation


if __name__ == "__main__":
    try:
        main(experiment.configure(globals()))
    except (settings.ConfigError, loading.DataError, models.ModelError, FileNotFoundError) as e:
        settings.fail(e)
