"""Channel units of a convolutional network (and neuron units of an MLP), found by Torch-Pruning's dependency graph.

A *channel group* is one Torch-Pruning pruning group: the output channels of a root convolution (or Linear) and
every channel coupled to them (the BatchNorm after it; in a residual stage, every convolution and BatchNorm
that adds into the same residual stream, shortcuts included; in MobileNetV2, the expansion 1x1 convolution and
the depthwise convolution after it; the input channels of every consumer, the classifier included). Removing
channel c of a group removes it everywhere at once, so the network stays well formed: no hand-written
bookkeeping. The classifier's outputs are never units.

Each group keeps its keep-mask in the dense model's channel numbering (`origin` lists the live channels'
original indices). `mask_by_zeros` is the reference semantics of a mask (the BatchNorm scale and shift of a
masked channel set to zero, so it outputs exactly 0 everywhere); `remove_channels` is the physical removal,
which must compute the same logits (tests/test_convnets.py checks it for a basic block, a bottleneck block and
an inverted residual).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class Member:
    """One module of a group, and which of its channels (in the group's channel order) it holds."""
    name: str
    module: nn.Module
    idxs: list[int]


@dataclass
class ChannelGroup:
    """One Torch-Pruning group: its root module, size (dense channels), the BatchNorms whose scales gate its
    channels, and the convolutions / Linears whose output channels are its channels (their filters)."""
    name: str
    kind: str            # "channel" (a conv root) or "neuron" (a Linear root)
    layer: int           # position of the group in the model's order (used for per-group thresholds)
    size: int
    norms: list[Member] = field(default_factory=list)
    producers: list[Member] = field(default_factory=list)
    origin: torch.Tensor | None = None

    @property
    def residual(self) -> bool:
        """Whether the group is a residual stream: the outputs of more than one ordinary (not depthwise) layer meet
        in it, at an addition (a ResNet stage's stem or shortcut and every block's last convolution; the reduce
        1x1 convolutions of a MobileNetV2 stage with skips). A depthwise convolution's channels are its input's,
        which does not make a stream."""
        return sum(1 for m in self.producers if getattr(m.module, "groups", 1) == 1) > 1


def _index(i) -> int:
    return int(getattr(i, "idx", i))


def example_call(model: nn.Module, example_inputs: dict):
    """Torch-Pruning's forward on a dict of model inputs (HF models return an output object: its logits)."""
    return dict(example_inputs=example_inputs, output_transform=lambda out: out.logits if hasattr(out, "logits") else out)


def classifier_of(model: nn.Module) -> nn.Module:
    """The final Linear (whose outputs are classes, never units): the last nn.Linear of the model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return linears[-1]


class ChannelUnits:
    """The channel groups of a model, traced by `torch_pruning.DependencyGraph` on `example_inputs` (a dict of
    model inputs, e.g. {"pixel_values": x}). `groups`: name -> ChannelGroup, the units; with `residual=False` the
    residual streams (`ChannelGroup.residual`) are not units and stay whole (in `fixed`); `params`: the
    BatchNorm scales by name (what slimming scores). Raises ValueError when the trace finds no prunable group."""

    granularity = "channels"
    structured = True

    def __init__(self, model: nn.Module, example_inputs: dict, residual: bool = True):
        self.model = model
        self.example_inputs = example_inputs
        was_training = model.training
        model.eval()
        self.graph = tp.DependencyGraph().build_dependency(model, **example_call(model, example_inputs))
        model.train(was_training)
        names = {m: n for n, m in model.named_modules()}
        self.groups: dict[str, ChannelGroup] = {}
        self.fixed: dict[str, ChannelGroup] = {}   # residual streams kept whole (residual=False)
        for i, group in enumerate(self.graph.get_all_groups(ignored_layers=[classifier_of(model)])):
            root = group[0].dep.target.module
            name = names[root]
            g = ChannelGroup(name, "neuron" if isinstance(root, nn.Linear) else "channel", len(self.groups),
                             len(group[0].idxs))
            for dep, idxs in group:
                module = dep.target.module
                if module not in names or dep.handler.__name__ != "prune_out_channels":
                    continue
                member = Member(names[module], module, [_index(j) for j in idxs])
                if isinstance(module, _BN):
                    g.norms.append(member)
                elif isinstance(module, (nn.Conv2d, nn.Conv1d, nn.Linear)):
                    g.producers.append(member)
            g.origin = torch.arange(g.size)
            if residual or not g.residual:
                self.groups[name] = g
            else:
                self.fixed[name] = g
        if not self.groups:
            raise ValueError(f"{type(model).__name__}: Torch-Pruning found no channel group to prune")
        self.params = {f"{m.name}.weight": m.module.weight for g in self.groups.values() for m in g.norms}
        self.mask_groups = self.groups

    # --- per-channel views --------------------------------------------------------------------------
    def per_channel(self, group: ChannelGroup, members: list[Member], tensor_of, reduce=torch.sum) -> torch.Tensor:
        """Sum over `members` of reduce(tensor_of(module)[idx, ...]) per channel of the group: (live channels,)."""
        total = None
        for m in members:
            t = tensor_of(m.module)
            if t is None:
                continue
            v = t[m.idxs].reshape(len(m.idxs), -1)
            v = reduce(v, 1) if v.shape[1] > 1 or reduce is not torch.sum else v[:, 0]
            total = v.float() if total is None else total + v.float()
        return total

    def live_size(self, name: str) -> int:
        return len(self.groups[name].origin)

    def to_original(self, live: dict[str, torch.Tensor], fill: float) -> dict[str, torch.Tensor]:
        """Live per-channel values placed at their original indices; removed channels get `fill`."""
        out = {}
        for n, g in self.groups.items():
            full = torch.full((g.size,), fill, dtype=live[n].dtype)
            full[g.origin] = live[n].detach().cpu()
            out[n] = full
        return out

    def layers(self) -> dict[str, int]:
        return {n: g.layer for n, g in self.groups.items()}

    def total_channels(self) -> int:
        return sum(g.size for g in self.groups.values())


@torch.no_grad()
def mask_by_zeros(units: ChannelUnits, masks: dict[str, torch.Tensor]) -> None:
    """The reference semantics of a keep-mask: every masked channel outputs exactly zero (its BatchNorms' scale
    and shift set to 0; a group without BatchNorm: its filters and biases). Works on the dense model only."""
    for name, g in units.groups.items():
        off = (~masks[name]).nonzero().squeeze(1).tolist()
        members = g.norms or g.producers
        for m in members:
            idx = [m.idxs[i] for i in off]
            m.module.weight[idx] = 0
            if m.module.bias is not None:
                m.module.bias[idx] = 0


@torch.no_grad()
def remove_channels(units: ChannelUnits, masks: dict[str, torch.Tensor]) -> dict[str, int]:
    """Physically remove every channel whose keep-mask entry is False, group by group, through Torch-Pruning's
    dependency graph (convolutions, BatchNorms, depthwise convolutions, residual additions, the classifier's
    inputs). `masks`: group -> bool (dense channels,). Updates each group's `origin`; returns channels removed
    per group."""
    removed = {}
    for name, g in units.groups.items():
        live = masks[name][g.origin]
        off = (~live).nonzero().squeeze(1).tolist()
        removed[name] = len(off)
        if not off:
            continue
        root = units.model.get_submodule(name)
        fn = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
        group = units.graph.get_pruning_group(root, fn, idxs=off)
        group.prune()
        g.origin = g.origin[live]
        # The members' channel lists now count the live channels only.
        for m in (*g.norms, *g.producers):
            m.idxs = list(range(len(g.origin)))
    return removed
