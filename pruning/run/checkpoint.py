"""The pruning state saved beside every HF checkpoint (pruning_state.safetensors), and the masks a
finished run leaves in its directory (masks.safetensors) for fixed-mask runs.

Written to a temporary file and renamed, so a kill never leaves a half-written state.
"""
from __future__ import annotations

import json
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from earlybird import pack_mask, unpack_mask
from pruning.core.units import PrunableUnits

PRUNING_STATE_FILE = "pruning_state.safetensors"
MASKS_FILE = "masks.safetensors"
RUN_CONFIG_FILE = "run_config.json"  # in the run directory, from its start: what a continuation is compared with


def write(path: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write `tensors` (name -> tensor, moved to CPU) and `meta` (JSON in the safetensors metadata, key
    "json") to `path` atomically: a temporary file, then os.replace. Creates the directory."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp,
              metadata={"json": json.dumps(meta)})
    os.replace(tmp, path)


def read(path: str) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file `write` wrote (safetensors load_file / safe_open); tensors on CPU."""
    with safe_open(path, "pt") as f:
        meta = json.loads(f.metadata()["json"])
    return load_file(path), meta


def pack_masks(masks: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep-masks as bit-packed uint8 tensors (`earlybird.pack_mask`, 8 entries a byte) under `prefix` + name."""
    return {f"{prefix}{n}": torch.from_numpy(pack_mask(m)) for n, m in masks.items()}


def unpack_masks(tensors: dict[str, torch.Tensor], prefix: str, shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The inverse of `pack_masks`: prefix + name -> bool tensor of `shapes[name]`. A KeyError names a
    group the tensors lack."""
    out = {}
    for name, shape in shapes.items():
        numel = 1
        for s in shape:
            numel *= s
        out[name] = unpack_mask(tensors[f"{prefix}{name}"].numpy(), numel).view(shape)
    return out


def read_run_masks(run_dir: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict]:
    """A finished run's keep-masks (original space), the scores they were selected from (None for a
    fixed-mask run, or a run from before scores were kept), and the file's metadata. Masks: group ->
    bool tensor of the dense group's shape; scores: float tensors of the same shapes (-inf: removed)."""
    tensors, meta = read(os.path.join(run_dir, MASKS_FILE))
    shapes = {n: tuple(s) for n, s in meta["groups"].items()}
    scores = {n: tensors[f"score/{n}"].view(shapes[n]) for n in shapes if f"score/{n}" in tensors}
    return unpack_masks(tensors, "keep/", shapes), (scores if len(scores) == len(shapes) else None), meta


TRAINER_STATE_FILE = "trainer_state.json"  # HF writes it last in every checkpoint-N folder


def complete_checkpoints(output_dir: str, pruned: bool = True) -> list[str]:
    """The checkpoint-N folders under `output_dir` that were completely written, oldest first: with
    the pruning state, written after everything HF saves (`pruned`), or else with HF's trainer state,
    its last file, readable as JSON. A folder that a kill or a full disk left half-written (only
    config.json, say) is not one: nothing resumes from it, and a run that has only such folders has
    nothing to resume. [] when `output_dir` does not exist."""
    steps = []
    if os.path.isdir(output_dir):
        steps = sorted(int(d.split("-")[-1]) for d in os.listdir(output_dir)
                       if d.startswith("checkpoint-") and d.split("-")[-1].isdigit())
    return [path for path in (os.path.join(output_dir, f"checkpoint-{step}") for step in steps)
            if _complete(path, pruned)]


def _complete(path: str, pruned: bool) -> bool:
    if pruned:
        return os.path.isfile(os.path.join(path, PRUNING_STATE_FILE))
    try:
        with open(os.path.join(path, TRAINER_STATE_FILE), encoding="utf-8") as f:
            json.load(f)
        return True
    except (OSError, ValueError):
        return False


def run_checkpoints(run_dir) -> list[str]:
    """`complete_checkpoints` of a run directory's checkpoints/, as its own record says to judge them:
    a dense run (TRAINER "dense" in its RUN_CONFIG_FILE) by HF's trainer state, any other by its pruning
    state (a run directory without a readable record: by the pruning state where any checkpoint has
    one). The one test of "is there something to resume" for runs, resumes and grid cells alike."""
    run_dir = os.fspath(run_dir)
    checkpoints = os.path.join(run_dir, "checkpoints")
    try:
        with open(os.path.join(run_dir, RUN_CONFIG_FILE), encoding="utf-8") as f:
            pruned = json.load(f)["config"]["TRAINER"] != "dense"
    except (OSError, ValueError, KeyError, TypeError):
        pruned = bool(complete_checkpoints(checkpoints, pruned=True))
    return complete_checkpoints(checkpoints, pruned)


def last_checkpoint_with_pruning_state(output_dir: str) -> str:
    """The newest checkpoint-N folder whose pruning state was completely written. Raises
    FileNotFoundError when `output_dir` holds none."""
    found = complete_checkpoints(output_dir, pruned=True)
    if not found:
        raise FileNotFoundError(f"no checkpoint with a complete pruning state under {output_dir}; nothing to resume")
    return found[-1]


# --- masks.safetensors of a finished run: what MASK_FROM reads ------------------------------------------------
def check_mask_source(run_dir: str, granularity: str) -> dict:
    """The metadata of MASK_FROM's masks file. Raises FileNotFoundError when `run_dir` holds none, and
    ValueError when its mask is of another granularity (`read_masks` also checks the model's shapes). A mask with a
    "<layers>.mlps" / "<layers>.layers" group (MLP_RATE / LAYER_RATE runs, the lottery's to-fraction tickets) gives
    the run those whole unit kinds (`whole_kinds`)."""
    path = os.path.join(run_dir, MASKS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MASK_FROM={run_dir}: no {MASKS_FILE} there; point it at the directory "
                                "of a finished pruning run (runs/NAME)")
    meta = read(path)[1]
    if meta["granularity"] != granularity:
        raise ValueError(f"MASK_FROM={run_dir} holds a {meta['granularity']!r} mask; this run's granularity is "
                         f"{granularity!r}: set GRANULARITY to match the source run")
    return meta


def read_masks(run_dir: str, units: PrunableUnits) -> dict[str, torch.Tensor]:
    """The final keep-masks of a finished run, checked against this model and granularity: group ->
    bool tensor of the dense group's shape. Raises FileNotFoundError / ValueError (`check_mask_source`),
    and ValueError when its groups or shapes are not this model's."""
    check_mask_source(run_dir, units.granularity)
    masks, _, meta = read_run_masks(run_dir)
    groups = {n: list(g.shape) for n, g in units.mask_groups.items()}
    if meta["groups"] != groups:
        raise ValueError(f"MASK_FROM={run_dir} holds a mask for another model ({meta.get('model', '?')}: "
                         f"{len(meta['groups'])} groups); this model has {len(groups)} groups of other shapes")
    return masks


def write_masks(trainer, run_dir: str, model_description: str) -> None:
    """A `PruningTrainer`'s final keep-masks, and the scores they were selected from (none for a fixed-mask run), to
    `run_dir`/MASKS_FILE; an unpruned run writes all-True masks."""
    groups = trainer.units.mask_groups
    masks = trainer.masks or {n: torch.ones(g.shape, dtype=torch.bool) for n, g in groups.items()}
    meta = {"granularity": trainer.units.granularity, "criterion": trainer.criterion.name,
            "model": model_description, "groups": {n: list(g.shape) for n, g in groups.items()}}
    tensors = pack_masks(masks, "keep/")
    if trainer.scores_at_prune is not None:
        tensors.update({f"score/{n}": s for n, s in trainer.scores_at_prune.items()})
    write(os.path.join(run_dir, MASKS_FILE), tensors, meta)
