"""The Early-Bird detector of You et al., ICLR 2020 ("Drawing Early-Bird Tickets").

At every check the caller hands in the current binary keep-mask over all prunable weights. The
detector keeps the last `window` masks in a FIFO and measures the normalized Hamming distance
between the newest mask and each older one. The early bird is found when the FIFO is full and
every one of those distances is below `epsilon`.

Masks are stored bit-packed (numpy.packbits): a BERT-base mask of 85M weights takes 10.6 MB
instead of 85 MB, the distance is an XOR plus a popcount, and the packed bytes double as a
fingerprint to compare masks across processes.
"""
from __future__ import annotations

import hashlib
from collections import deque

import numpy as np
import torch


def pack_mask(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    """Flat boolean mask -> packed uint8 array (8 weights per byte)."""
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().numpy()
    return np.packbits(np.asarray(mask, dtype=bool).ravel())


def unpack_mask(packed: np.ndarray, numel: int) -> torch.Tensor:
    """Packed uint8 array -> flat boolean tensor of `numel` weights."""
    return torch.from_numpy(np.unpackbits(packed, count=numel).astype(bool))


def mask_fingerprint(packed: np.ndarray) -> str:
    """Short SHA-256 of a packed mask: equal fingerprints mean equal masks."""
    return hashlib.sha256(np.ascontiguousarray(packed).tobytes()).hexdigest()[:16]


def hamming_distance(a: np.ndarray, b: np.ndarray, numel: int) -> float:
    """Fraction of the `numel` positions where two packed masks differ."""
    if a.shape != b.shape:
        raise ValueError(f"masks of different sizes: {a.size} and {b.size} bytes")
    # Padding bits of the last byte are zero in both masks, so they never count as differences.
    return int(np.bitwise_count(np.bitwise_xor(a, b)).sum()) / numel


class EarlyBirdDetector:
    """FIFO of the last `window` masks; fires when all distances to the newest are < epsilon."""

    def __init__(self, window: int = 5, epsilon: float = 0.1):
        if not isinstance(window, int) or window < 2:
            raise ValueError(f"early-bird window must be an integer >= 2 (got {window!r}): "
                             "the detector compares the newest mask with at least one older mask")
        if not epsilon > 0:
            raise ValueError(f"early-bird epsilon must be > 0 (got {epsilon!r}): "
                             "it is the mask distance below which the mask counts as settled")
        self.window = window
        self.epsilon = float(epsilon)
        self.numel: int | None = None
        self.masks: deque[np.ndarray] = deque(maxlen=window)
        self.history: list[dict] = []  # one entry per check: {"step", "distances", "max_distance"}
        self.found_step: int | None = None
        # Optional mask to measure drift against (the mask of the pretrained weights, for magnitude):
        # it shows how far the mask has moved since training began, which the FIFO cannot.
        self.reference: np.ndarray | None = None

    @property
    def found(self) -> bool:
        """True once the early bird was found (`found_step` set); it stays True."""
        return self.found_step is not None

    @property
    def settled(self) -> bool:
        """At the newest check: FIFO full and every distance to the newest mask below epsilon."""
        last = self.history[-1] if self.history else None
        return (last is not None and len(self.masks) == self.window and last["max_distance"] is not None
                and last["max_distance"] < self.epsilon)

    def set_reference(self, mask: torch.Tensor | np.ndarray) -> None:
        """Keep a flat keep-mask (bool tensor or array) to report each check's `distance_to_reference`
        against; it takes no part in the test. A later `update` raises ValueError (`hamming_distance`)
        if its packed length differs from the checked masks'."""
        self.reference = pack_mask(mask)

    def update(self, mask: torch.Tensor | np.ndarray, step: int) -> bool:
        """Push the flat keep-mask (bool tensor or array, any shape: it is raveled) of this check at
        optimizer step `step`; return True once the early bird is found. Raises ValueError when its
        numel differs from the first mask's."""
        numel = int(mask.numel() if isinstance(mask, torch.Tensor) else np.size(mask))
        mask = pack_mask(mask)
        if self.numel is None:
            self.numel = numel
        elif numel != self.numel:
            raise ValueError(f"mask has {numel} weights, earlier masks had {self.numel}")
        self.masks.append(mask)
        older = list(self.masks)[:-1]
        distances = [hamming_distance(mask, old, numel) for old in older]
        self.history.append({"step": int(step), "distances": distances,
                             "max_distance": max(distances) if distances else None})
        if self.reference is not None:
            self.history[-1]["distance_to_reference"] = hamming_distance(mask, self.reference, numel)
        if self.found_step is None and len(self.masks) == self.window and max(distances) < self.epsilon:
            self.found_step = int(step)
        return self.found

    # --- checkpointing: everything needed to continue exactly where we were --------------------
    def state_dict(self) -> dict:
        """Everything needed to continue: window, epsilon, numel, the FIFO's packed masks (uint8 arrays),
        the history, found_step and the reference mask."""
        return {"window": self.window, "epsilon": self.epsilon, "numel": self.numel,
                "masks": [m.copy() for m in self.masks], "history": [dict(h) for h in self.history],
                "found_step": self.found_step, "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`. Raises ValueError when its window or epsilon differ from this detector's."""
        if state["window"] != self.window or state["epsilon"] != self.epsilon:
            raise ValueError(f"checkpoint detector (window={state['window']}, epsilon={state['epsilon']}) "
                             f"differs from this run's (window={self.window}, epsilon={self.epsilon})")
        self.numel = state["numel"]
        self.masks = deque((np.asarray(m, dtype=np.uint8) for m in state["masks"]), maxlen=self.window)
        self.history = [dict(h) for h in state["history"]]
        self.found_step = state["found_step"]
        ref = state.get("reference")
        self.reference = None if ref is None else np.asarray(ref, dtype=np.uint8)


def plot_distances(histories: dict[str, list[dict]], epsilon: float, path, *, title: str = "",
                   eb_step: int | None = None, prune_step: int | None = None) -> None:
    """Plot the max mask distance (and each lag) against the optimizer step: one panel per detector
    (weights; or heads and neurons)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(histories), figsize=(6 * len(histories), 3.5), dpi=100, squeeze=False)
    for ax, (kind, history) in zip(axes[0], histories.items()):
        checks = [h for h in history if h["distances"]]
        if checks:
            lags = max(len(h["distances"]) for h in checks)
            for lag in range(1, lags + 1):
                pts = [(h["step"], h["distances"][-lag]) for h in checks if len(h["distances"]) >= lag]
                ax.plot(*zip(*pts), lw=0.8, alpha=0.5, label=f"lag {lag}")
            ax.plot([h["step"] for h in checks], [h["max_distance"] for h in checks], "k.-", lw=1.5,
                    label="max (the detector's test)")
        ref = [(h["step"], h["distance_to_reference"]) for h in history if "distance_to_reference" in h]
        if ref:
            ax.plot(*zip(*ref), "b--", lw=1, label="distance to the mask at step 0")
        ax.axhline(epsilon, color="red", ls="--", lw=1, label=f"epsilon = {epsilon:g}")
        if eb_step is not None:
            ax.axvline(eb_step, color="green", lw=1, label=f"early bird @ step {eb_step}")
        elif prune_step is not None:
            ax.axvline(prune_step, color="orange", lw=1, label=f"no early bird; pruned @ {prune_step}")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"normalized Hamming distance ({kind})")
        ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{kind} mask", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
