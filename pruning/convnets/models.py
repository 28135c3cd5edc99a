"""The models of resnet.py and mlp.py: Hugging Face's ResNet-18 / ResNet-50 / MobileNetV2 (random init from a config,
or a local pretrained folder), with an optional CIFAR stem, and a plain MLP for tabular data; saving and loading a
model whose channels were removed (one call, in a fresh process)."""
from __future__ import annotations

import os

import torch
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

ARCHITECTURES = ("resnet18", "resnet50", "mobilenet_v2")
MODEL_FILE = "model.pt"


def build_image_model(name: str, num_labels: int, channels: int, stem: str, width: float = 1.0,
                      pretrained: str = "", id2label: dict | None = None) -> nn.Module:
    """A HF image classifier. `name`: resnet18 (basic blocks [2,2,2,2], 64..512), resnet50 (bottlenecks [3,4,6,3],
    256..2048), mobilenet_v2; `width` scales every channel count (1.0 = the paper's); `stem`: "imagenet" (the
    model's own) or "cifar" (`cifar_stem`); `pretrained`: a local folder saved with save_pretrained ("" = random
    init). Raises ValueError for an unknown name or stem."""
    from transformers import (MobileNetV2Config, MobileNetV2ForImageClassification, ResNetConfig,
                              ResNetForImageClassification)
    if name not in ARCHITECTURES:
        raise ValueError(f"MODEL={name!r}: choose one of {', '.join(ARCHITECTURES)}")
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"STEM={stem!r}: choose 'imagenet' or 'cifar'")
    labels = dict(num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in (id2label or {}).items()})
    if pretrained:
        cls = MobileNetV2ForImageClassification if name == "mobilenet_v2" else ResNetForImageClassification
        model = cls.from_pretrained(pretrained, ignore_mismatched_sizes=True, **labels)
    elif name == "mobilenet_v2":
        model = MobileNetV2ForImageClassification(MobileNetV2Config(
            num_channels=channels, depth_multiplier=width, classifier_dropout_prob=0.2, tf_padding=False,
            image_size=32 if stem == "cifar" else 224, **labels))
    else:
        def w(c):
            return max(1, int(round(c * width)))
        basic = name == "resnet18"
        model = ResNetForImageClassification(ResNetConfig(
            num_channels=channels, layer_type="basic" if basic else "bottleneck",
            depths=[2, 2, 2, 2] if basic else [3, 4, 6, 3],
            hidden_sizes=[w(c) for c in ((64, 128, 256, 512) if basic else (256, 512, 1024, 2048))],
            embedding_size=w(64), downsample_in_first_stage=False, **labels))
    if stem == "cifar":
        cifar_stem(model, channels)
    return model


def cifar_stem(model: nn.Module, channels: int) -> None:
    """The CIFAR stem of He et al. 2016 / You et al. 2020, in place: the first convolution becomes 3x3, stride 1,
    padding 1, and ResNet's stem max-pool goes (MobileNetV2: its first convolution's stride becomes 1). HF's
    configs have no such option, so this is the one module swap; a pretrained stem's 7x7 weights are dropped."""
    if hasattr(model, "resnet"):
        layer = model.resnet.embedder.embedder
        out = layer.convolution.out_channels
        layer.convolution = nn.Conv2d(channels, out, 3, stride=1, padding=1, bias=False)
        model.resnet.embedder.pooler = nn.Identity()
    else:
        conv = model.mobilenet_v2.conv_stem.first_conv.convolution
        conv.stride = (1, 1)


class TabularMLP(nn.Module):
    """An MLP for tabular features: `hidden` sizes, each Linear -> BatchNorm1d -> ReLU -> Dropout (the BatchNorm
    scales are what slimming scores), then a Linear classifier. forward(features, labels) returns an
    `ImageClassifierOutput` (loss, logits), as the HF Trainer expects."""

    def __init__(self, in_features: int, hidden: list[int], num_labels: int, dropout: float = 0.1):
        super().__init__()
        layers, width = [], in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_labels)
        self.settings = {"in_features": in_features, "hidden": list(hidden), "num_labels": num_labels,
                       "dropout": dropout}

    def forward(self, features, labels=None, **kwargs):
        logits = self.classifier(self.body(features))
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def save_model(model: nn.Module, directory: str) -> str:
    """The whole model (modules and weights, pruned shapes included) to `directory`/model.pt, written to a
    temporary file first; `load_model` reads it back in any process that has torch and transformers."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, MODEL_FILE)
    was_training = model.training
    model.eval()
    torch.save(model, path + ".tmp")
    model.train(was_training)
    os.replace(path + ".tmp", path)
    return path


def load_model(directory: str) -> nn.Module:
    """One call: the model `save_model` wrote (a run's `model/`), in eval mode."""
    path = directory if directory.endswith(".pt") else os.path.join(directory, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no saved model there (runs/NAME/model holds {MODEL_FILE})")
    return torch.load(path, weights_only=False).eval()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def forward_flops(model: nn.Module, example_inputs: dict) -> float:
    """FLOPs (2 per multiply-add) of one forward pass on `example_inputs`, counted by Torch-Pruning's op counter."""
    import torch_pruning as tp
    was = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, example_inputs)
    model.train(was)
    return 2.0 * float(macs)
