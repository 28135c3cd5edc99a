"""BERT/RoBERTa sequence classifiers whose layers keep different numbers of attention heads and FFN neurons.

Structured pruning physically removes heads (rows of query/key/value, columns of attention.output.dense) and FFN
neurons (rows of intermediate.dense, columns of output.dense), so every encoder layer can end up with its own head
count and intermediate size. transformers 5 dropped `prune_heads`/`config.pruned_heads` and its configs describe
one head count and one intermediate size for all layers, so plain `from_pretrained` on such weights fails with
size mismatches. This module adds configs that record the per-layer structure and model classes that build their
layers from it.

They load through `trust_remote_code`, HF's standard mechanism for architectures it does not ship: the classes are
registered for the Auto API, so `save_pretrained` copies this file next to config.json and writes an `auto_map`
pointing at it, and `AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)` imports it
from there. Because the file is imported on its own, it depends only on torch, transformers and the stdlib.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)


def _check_per_layer_structure(config) -> None:
    layers = config.num_hidden_layers
    for field, most in (("attention_heads_per_layer", config.num_attention_heads),
                        ("intermediate_size_per_layer", config.intermediate_size)):
        values = getattr(config, field)
        if values is None:
            continue
        if len(values) != layers:
            raise ValueError(f"{field} has {len(values)} entries for {layers} layers")
        if not all(1 <= value <= most for value in values):
            raise ValueError(f"{field} must lie in [1, {most}]; got {values}")
    if config.kept_heads is not None:
        heads_per_layer = config.attention_heads_per_layer or [config.num_attention_heads] * layers
        if [len(kept) for kept in config.kept_heads] != list(heads_per_layer):
            raise ValueError(f"kept_heads {config.kept_heads} does not match attention_heads_per_layer "
                             f"{list(heads_per_layer)}")
        if not all(0 <= head < config.num_attention_heads for kept in config.kept_heads for head in kept):
            raise ValueError(f"kept_heads must be original head indices in [0, {config.num_attention_heads}); "
                             f"got {config.kept_heads}")


# `@strict` (as on BertConfig) makes the new fields dataclass fields with type checks and collects the
# `validate_*` method as a class validator, run after __init__ and again by save_pretrained.
@strict
class PrunedBertConfig(BertConfig):
    """BertConfig plus the per-layer structure left by structured pruning (None: unpruned in that respect).

    `num_attention_heads` stays the original count because it fixes the head size (hidden_size / heads).
    `kept_heads[i]` lists the original indices of the heads layer i kept; informational only.
    """

    model_type = "pruned_bert"

    attention_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    kept_heads: list[list[int]] | None = None

    def validate_per_layer_structure(self):
        """Run by HF's @strict after __init__ and by save_pretrained. Raises ValueError when a per-layer list
        has not one entry per layer, an entry outside [1, the dense count], or kept_heads that do not match
        the head counts or are not original head indices."""
        _check_per_layer_structure(self)


@strict
class PrunedRobertaConfig(RobertaConfig):
    """RobertaConfig plus the per-layer structure left by structured pruning; see PrunedBertConfig."""

    model_type = "pruned_roberta"

    attention_heads_per_layer: list[int] | None = None
    intermediate_size_per_layer: list[int] | None = None
    kept_heads: list[list[int]] | None = None

    def validate_per_layer_structure(self):
        """As PrunedBertConfig's: raises ValueError for per-layer lists or kept_heads that do not fit the config."""
        _check_per_layer_structure(self)


def _shape_layers(model) -> None:
    """Replace each encoder layer's attention and FFN Linears by ones of the sizes the config lists.

    The new Linears are created in the current device context: on the meta device inside from_pretrained, which
    then loads the checkpoint into them; on a real device otherwise, where the caller's post_init initialises them.
    """
    config = model.config
    for i, layer in enumerate(model.base_model.encoder.layer):
        attention = layer.attention.self
        if config.attention_heads_per_layer is not None:
            heads = config.attention_heads_per_layer[i]
            width = heads * attention.attention_head_size
            attention.query = nn.Linear(config.hidden_size, width)
            attention.key = nn.Linear(config.hidden_size, width)
            attention.value = nn.Linear(config.hidden_size, width)
            layer.attention.output.dense = nn.Linear(width, config.hidden_size)
            attention.num_attention_heads = heads
            attention.all_head_size = width
        if config.intermediate_size_per_layer is not None:
            size = config.intermediate_size_per_layer[i]
            layer.intermediate.dense = nn.Linear(config.hidden_size, size)
            layer.output.dense = nn.Linear(size, config.hidden_size)


class PrunedBertForSequenceClassification(BertForSequenceClassification):
    """BertForSequenceClassification whose encoder layers are built with the config's per-layer head counts
    and intermediate sizes (loads with trust_remote_code=True)."""
    config_class = PrunedBertConfig

    def __init__(self, config: PrunedBertConfig):
        super().__init__(config)
        _shape_layers(self)
        # Initialises only the new Linears: the parent's post_init marked every other module as initialised.
        self.post_init()


class PrunedRobertaForSequenceClassification(RobertaForSequenceClassification):
    """RobertaForSequenceClassification built with the config's per-layer structure; see
    PrunedBertForSequenceClassification."""
    config_class = PrunedRobertaConfig

    def __init__(self, config: PrunedRobertaConfig):
        super().__init__(config)
        _shape_layers(self)
        self.post_init()


PrunedBertConfig.register_for_auto_class("AutoConfig")
PrunedRobertaConfig.register_for_auto_class("AutoConfig")
PrunedBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
PrunedRobertaForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


def _pruned_classes(model) -> tuple[type, type]:
    # isinstance, not an exact type match: a model loaded with trust_remote_code is an instance of the copy of
    # this module's class in HF's module cache, which still derives from the transformers class.
    if isinstance(model, BertForSequenceClassification):
        return PrunedBertForSequenceClassification, PrunedBertConfig
    if isinstance(model, RobertaForSequenceClassification):
        return PrunedRobertaForSequenceClassification, PrunedRobertaConfig
    raise ValueError(f"structured pruning supports BERT and RoBERTa sequence classifiers; got {type(model).__name__}")


def per_layer_structure(model) -> dict[str, list[int]]:
    """Head count and FFN intermediate size of each encoder layer, read from the modules' shapes:
    {"attention_heads_per_layer": [...], "intermediate_size_per_layer": [...]}, one entry per layer.
    Raises ValueError for a model that is not a BERT/RoBERTa classifier or whose widths do not agree."""
    _pruned_classes(model)
    heads, sizes = [], []
    for i, layer in enumerate(model.base_model.encoder.layer):
        attention = layer.attention.self
        head_size = attention.attention_head_size
        width = attention.query.out_features
        widths = {width, attention.key.out_features, attention.value.out_features,
                  layer.attention.output.dense.in_features}
        if len(widths) != 1 or width % head_size:
            raise ValueError(f"layer {i}: query/key/value/attention.output widths {sorted(widths)} are not one "
                             f"whole number of heads of size {head_size}")
        size = layer.intermediate.dense.out_features
        if layer.output.dense.in_features != size:
            raise ValueError(f"layer {i}: intermediate.dense has {size} outputs but output.dense takes "
                             f"{layer.output.dense.in_features} inputs")
        heads.append(width // head_size)
        sizes.append(size)
    return {"attention_heads_per_layer": heads, "intermediate_size_per_layer": sizes}


def as_pruned_model(model, kept_heads: list[list[int]] | None = None):
    """Turn, in place, a BERT/RoBERTa sequence classifier whose Linears were already shrunk into the Pruned class.

    Afterwards `model.save_pretrained(path)` writes a directory that loads with
    `AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`. `kept_heads` gives the
    original indices of the heads each layer kept; without it, an already-pruned model's record is kept if it still
    matches the head counts. Returns the model. Raises ValueError as `per_layer_structure` and the
    config's validation do.
    """
    model_class, config_class = _pruned_classes(model)
    structure = per_layer_structure(model)
    old_config = model.config
    if kept_heads is None:
        previous = getattr(old_config, "kept_heads", None)
        if previous is not None and [len(kept) for kept in previous] == structure["attention_heads_per_layer"]:
            kept_heads = previous
    settings = old_config.to_dict()
    settings.pop("model_type")  # a class attribute; passed as a kwarg it would shadow the new class's value
    settings.update(structure, kept_heads=kept_heads, architectures=[model_class.__name__])
    config = config_class(**settings)  # validates before the model is touched
    # to_dict leaves out the attention implementation; keep the one the model runs with.
    config._attn_implementation = old_config._attn_implementation

    for layer, heads in zip(model.base_model.encoder.layer, structure["attention_heads_per_layer"]):
        layer.attention.self.num_attention_heads = heads
        layer.attention.self.all_head_size = heads * layer.attention.self.attention_head_size
    model.__class__ = model_class
    # Submodules (the base model, every attention block) hold their own reference to the config.
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = config
    return model
