"""Knowledge distillation from a finished model while the pruned model retrains.

The teacher is fixed and the training sentences do not change, so its logits are computed once (in
eval mode, no dropout) and cached on disk, keyed by the teacher's weights and the tokenized sentences;
the student's step then reads them from its batch instead of paying for a teacher forward pass. Runs
of other seeds, criteria or rates over the same data and teacher share the cache.

Loss (Hinton et al. 2015; oBERT's temperature 2, hardness 1):
    hardness * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - hardness) * CE(student, label)
A regression (one output, STS-B) has no distribution to soften: its soft term is the squared error to
the teacher's value, its hard term the squared error to the label (the regression head's own loss).

The cache is keyed by the rows' input_ids: a pair's segment ids follow from its ids (the tokenizer's
separator), and `compute_logits` passes them to the teacher (`pruning.data.loading.MODEL_INPUTS`).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.nn import functional as F

from pruning.data.loading import MODEL_INPUTS

LOGITS_COLUMN = "teacher_logits"


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
                      temperature: float, hardness: float) -> torch.Tensor:
    """Mean over the batch of the distillation loss above (0-d float32 tensor). `student`, `teacher`:
    logits (batch, labels); `labels`: class ids (batch,), or a regression's targets, or None for the soft
    term only. KL as torch's kl_div(reduction="batchmean"), scaled by T^2 as Hinton et al. 2015; with one
    output (a regression) mean squared errors instead, and the temperature unused."""
    regression = student.shape[-1] == 1
    if regression:
        soft = F.mse_loss(student.float().reshape(-1), teacher.float().reshape(-1))
    else:
        t = temperature
        soft = F.kl_div(F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
                        reduction="batchmean", log_target=True) * t * t
    if hardness >= 1.0 or labels is None:
        return soft
    hard = (F.mse_loss(student.float().reshape(-1), labels.float().reshape(-1)) if regression
            else F.cross_entropy(student.float(), labels))
    return hardness * soft + (1 - hardness) * hard


def check_settings(temperature: float, hardness: float) -> None:
    """Raise ValueError unless temperature > 0 and hardness lies in [0, 1]."""
    if not temperature > 0:
        raise ValueError(f"DISTILL_TEMPERATURE must be > 0, got {temperature}")
    if not 0 <= hardness <= 1:
        raise ValueError(f"DISTILL_HARDNESS must lie in [0, 1] (1 = only the teacher's soft labels), got {hardness}")


def teacher_directory(teacher: str) -> Path:
    """The model directory of TEACHER: a finished run's model/ or a checkpoint with config.json.
    Raises FileNotFoundError when neither holds config.json."""
    path = Path(teacher)
    for candidate in (path / "model", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"TEACHER={teacher}: no model there; give a finished run's directory (runs/NAME, whose "
                            "model/ is the teacher) or a checkpoint directory holding config.json and its weights")


def _weights_digest(directory: Path) -> str:
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    if not files:
        raise FileNotFoundError(f"TEACHER={directory}: config.json but no weights (*.safetensors or *.bin)")
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                h.update(chunk)
    return h.hexdigest()


def _rows_digest(input_ids: list[list[int]]) -> str:
    h = hashlib.sha256()
    for ids in input_ids:
        h.update(np.asarray(ids, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()


def load_teacher(directory: Path):
    """The teacher (HF AutoModelForSequenceClassification.from_pretrained of `directory`) in eval mode, on CPU,
    in float32 whatever dtype it was saved in: its cached logits do not depend on any run's PRECISION."""
    from transformers import AutoModelForSequenceClassification
    return AutoModelForSequenceClassification.from_pretrained(str(directory), trust_remote_code=True,
                                                              dtype=torch.float32).eval()


@torch.inference_mode()
def compute_logits(model, rows: list[dict], collate, batch_size: int = 128) -> np.ndarray:
    """The model's logits for every row, in the rows' order (batched by length, little padding): a
    float32 array (rows, num_labels). `rows`: dicts with input_ids and attention_mask lists (and token_type_ids of a
    BERT pair task)."""
    device = next(model.parameters()).device
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    out = np.zeros((len(rows), model.config.num_labels), dtype=np.float32)
    for i in range(0, len(order), batch_size):
        chunk = order[i:i + batch_size]
        batch = collate([{k: rows[j][k] for k in MODEL_INPUTS if k in rows[j]} for j in chunk])
        logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
        out[chunk] = logits.float().cpu().numpy()
    return out


def cached_logits(teacher: str, rows: list[dict], collate, cache_dir: Path, vocab_size: int) -> tuple[np.ndarray, dict]:
    """(the teacher's logits for `rows`, what they cost): read from cache_dir, or computed once and written
    there. "seconds" is what this call spent; "compute_seconds" what computing them took, cached or not:
    the cost a run is charged, so that a cache hit does not make distillation look free. Logits: float32
    array (rows, num_labels). Raises FileNotFoundError (no teacher model or weights) and ValueError when
    the teacher's vocab_size is not the student's."""
    directory = teacher_directory(teacher)
    config = json.loads((directory / "config.json").read_text())
    if config.get("vocab_size") != vocab_size:
        raise ValueError(f"TEACHER={teacher} has a vocabulary of {config.get('vocab_size')} tokens, the student "
                         f"{vocab_size}: the teacher must read the student's token ids (the same tokenizer)")
    key = f"{_weights_digest(directory)[:16]}-{_rows_digest([r['input_ids'] for r in rows])[:16]}"
    path = Path(cache_dir) / f"{key}.safetensors"
    if path.is_file():
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            computed_in = float(f.metadata()["seconds"])
        return load_file(str(path))["logits"].numpy(), {"cached": True, "seconds": 0.0, "compute_seconds": computed_in,
                                                        "file": str(path)}
    started = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # loading the teacher must not move the student's random state
        logits = compute_logits(load_teacher(directory), rows, collate)
    seconds = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"logits": torch.from_numpy(logits)}, str(tmp), metadata={"teacher": str(directory.resolve()),
                                                                         "seconds": repr(seconds)})
    os.replace(tmp, path)
    return logits, {"cached": False, "seconds": seconds, "compute_seconds": seconds, "file": str(path)}
