"""Sequence classifiers whose layers keep different numbers of attention heads and FFN neurons, for every
architecture family in `layouts.py` (BERT, RoBERTa, ELECTRA, XLM-RoBERTa, DistilBERT, DeBERTa-v2/v3, ModernBERT).

Structured pruning physically removes heads (rows of the query/key/value projections, columns of the attention
output projection) and FFN neurons (rows of the FFN up projection, columns of the down projection; fused
projections lose the unit's rows in each of their chunks, see layouts.py), so every
encoder layer can end up with its own head count and FFN size. transformers 5 dropped
`prune_heads`/`config.pruned_heads` and its configs describe one head count and one FFN size for all layers, so
plain `from_pretrained` on such weights fails with size mismatches. This module adds, per family, a config that
records the per-layer structure (`Pruned<Family>Config`) and a model class that builds its layers from it
(`Pruned<Family>ForSequenceClassification`).

They load through `trust_remote_code`, HF's standard mechanism for architectures it does not ship: the classes are
registered for the Auto API, so `save_pretrained` copies this file (and `layouts.py`, which it imports) next to
config.json and writes an `auto_map` pointing at it, and
`AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)` imports it from there. Because
the files are imported on their own, they depend only on torch, transformers and the stdlib.

The saved config keeps its family's own `model_type` ("bert", "distilbert", ...): `AutoConfig` and
`AutoTokenizer` then read the directory without custom code (no "Do you wish to run the custom code?" prompt,
no unknown-model-type warning), while `auto_map` sends `AutoModelForSequenceClassification` with
`trust_remote_code=True` to the pruned class. Without `trust_remote_code`, transformers builds the stock class,
which refuses the smaller weights (size mismatch) rather than loading them.
"""

from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DebertaV2Config,
    DebertaV2ForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
    ElectraConfig,
    ElectraForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

try:  # inside the pruning package, or HF's module cache (both files copied next to config.json)
    from .layouts import layout_of
except ImportError:  # this file loaded alone by path (tests); HF's import check skips try blocks
    from pruning.core.layouts import layout_of


def _check_per_layer_structure(config) -> None:
    layout = layout_of(config)
    layers = config.num_hidden_layers
    heads = getattr(config, layout.config_heads)
    for field, least, most in (("attention_heads_per_layer", 1, heads),
                               ("intermediate_size_per_layer", 0, getattr(config, layout.config_ffn))):
        values = getattr(config, field)
        if values is None:
            continue
        if len(values) != layers:
            raise ValueError(f"{field} has {len(values)} entries for {layers} layers")
        if not all(least <= value <= most for value in values):
            raise ValueError(f"{field} must lie in [{least}, {most}]; got {values}")
    if config.kept_layers is not None and (len(config.kept_layers) != layers
                                           or sorted(set(config.kept_layers)) != list(config.kept_layers)):
        raise ValueError(f"kept_layers must list the {layers} kept layers' original indices in increasing order; "
                         f"got {config.kept_layers}")
    if config.kept_heads is not None:
        heads_per_layer = config.attention_heads_per_layer or [heads] * layers
        if [len(kept) for kept in config.kept_heads] != list(heads_per_layer):
            raise ValueError(f"kept_heads {config.kept_heads} does not match attention_heads_per_layer "
                             f"{list(heads_per_layer)}")
        if not all(0 <= head < heads for kept in config.kept_heads for head in kept):
            raise ValueError(f"kept_heads must be original head indices in [0, {heads}); "
                             f"got {config.kept_heads}")


def _validate_per_layer_structure(self):
    """Run by HF's @strict after __init__ and by save_pretrained. Raises ValueError when a per-layer list
    has not one entry per layer, an entry outside [1, the dense count], or kept_heads that do not match
    the head counts or are not original head indices."""
    _check_per_layer_structure(self)


def _pruned_config(base: type) -> type:
    """`base` (a transformers config class) plus the per-layer structure left by structured pruning, with
    `@strict` (as on BertConfig), which makes the new fields type-checked dataclass fields and collects
    `validate_per_layer_structure` as a class validator. None in a field: unpruned in that respect.
    The dense head count stays (it fixes the head size); `kept_heads[i]` lists the original indices of
    the heads layer i kept, and `kept_layers` the original indices of the layers kept when whole layers were
    removed (both informational; the layer count is the family's own field). An FFN size of 0 is a whole
    MLP removed: that layer's FFN Linears have no rows / columns and its down projection no bias."""
    name = "Pruned" + base.__name__
    namespace = {
        "__module__": __name__, "__qualname__": name,
        "__doc__": f"{base.__name__} plus the per-layer structure left by structured pruning (see _pruned_config).",
        "__annotations__": {"attention_heads_per_layer": list[int] | None,
                            "intermediate_size_per_layer": list[int] | None,
                            "kept_heads": list[list[int]] | None,
                            "kept_layers": list[int] | None},
        "attention_heads_per_layer": None, "intermediate_size_per_layer": None, "kept_heads": None,
        "kept_layers": None,
        "validate_per_layer_structure": _validate_per_layer_structure,
    }
    return strict(type(name, (base,), namespace))


def _shape_layers(model) -> None:
    """Replace each encoder layer's attention and FFN Linears by ones of the sizes the config lists.

    The new Linears are created in the current device context: on the meta device inside from_pretrained, which
    then loads the checkpoint into them; on a real device otherwise, where the caller's post_init initialises them.
    """
    config, layout = model.config, layout_of(model)

    def resize(layer, path, out_features=None, in_features=None, bias=True):
        old = layer.get_submodule(path)
        layer.set_submodule(path, nn.Linear(old.in_features if in_features is None else in_features,
                                            old.out_features if out_features is None else out_features,
                                            bias=bias and old.bias is not None))
    for i, layer in enumerate(layout.layer_list(model)):
        if config.attention_heads_per_layer is not None:
            heads = config.attention_heads_per_layer[i]
            width = heads * layout.head_size(layer)
            for path, chunks in layout.head_projections_in(layer):
                resize(layer, path, out_features=chunks * width)
            resize(layer, layout.attention_output, in_features=width)
            layout.set_heads(layer, heads)
        if config.intermediate_size_per_layer is not None:
            size = config.intermediate_size_per_layer[i]
            resize(layer, layout.ffn_up, out_features=layout.ffn_chunks * size)
            resize(layer, layout.ffn_down, in_features=size, bias=size > 0)  # 0: the whole MLP was removed


def _pruned_classifier(base: type, config_class: type) -> type:
    """`base` (a transformers sequence classifier) whose encoder layers are built with the config's per-layer
    head counts and FFN sizes; loads with trust_remote_code=True."""
    name = "Pruned" + base.__name__

    def __init__(self, config):
        base.__init__(self, config)
        _shape_layers(self)
        # Initialises only the new Linears: the parent's post_init marked every other module as initialised.
        self.post_init()
    __init__.__qualname__ = f"{name}.__init__"
    return type(name, (base,), {"__module__": __name__, "__qualname__": name, "config_class": config_class,
                                "__init__": __init__, "__doc__": f"{base.__name__} built with the config's "
                                "per-layer structure (see _pruned_classifier)."})


# (stock classifier, stock config) per family; the pruned classes are module attributes under their own names
# (PrunedBertConfig, PrunedBertForSequenceClassification, ...), which is how auto_map finds them.
_STOCK = ((BertForSequenceClassification, BertConfig), (RobertaForSequenceClassification, RobertaConfig),
          (ElectraForSequenceClassification, ElectraConfig),
          (XLMRobertaForSequenceClassification, XLMRobertaConfig),
          (DistilBertForSequenceClassification, DistilBertConfig),
          (DebertaV2ForSequenceClassification, DebertaV2Config),
          (ModernBertForSequenceClassification, ModernBertConfig))
_PRUNED = []  # (stock classifier, pruned classifier, pruned config)
for _model, _config in _STOCK:
    _pruned_config_class = _pruned_config(_config)
    _pruned_model_class = _pruned_classifier(_model, _pruned_config_class)
    _pruned_config_class.register_for_auto_class("AutoConfig")
    _pruned_model_class.register_for_auto_class("AutoModelForSequenceClassification")
    globals()[_pruned_config_class.__name__] = _pruned_config_class
    globals()[_pruned_model_class.__name__] = _pruned_model_class
    _PRUNED.append((_model, _pruned_model_class, _pruned_config_class))


def pruned_class_of(config):
    """The pruned classifier class a saved config names in `architectures` (e.g.
    "PrunedBertForSequenceClassification"), or None for any other config: how a model saved by a
    heads+neurons run loads with these classes rather than with trust_remote_code's copy."""
    names = set(getattr(config, "architectures", None) or [])
    return next((model_class for _, model_class, _ in _PRUNED if model_class.__name__ in names), None)


def _pruned_classes(model) -> tuple[type, type]:
    # type(model).__mro__, not an exact type match: a model loaded with trust_remote_code is an instance of the
    # copy of this module's class in HF's module cache, which still derives from the transformers class.
    for stock, model_class, config_class in _PRUNED:
        if stock in type(model).__mro__:
            return model_class, config_class
    names = ", ".join(stock.__name__ for stock, _, _ in _PRUNED)
    raise ValueError(f"structured pruning supports these sequence classifiers: {names}; got {type(model).__name__}")


def per_layer_structure(model) -> dict[str, list[int]]:
    """Head count and FFN size of each encoder layer, read from the modules' shapes:
    {"attention_heads_per_layer": [...], "intermediate_size_per_layer": [...]}, one entry per layer.
    Raises ValueError for a model that is not a supported classifier or whose widths do not agree."""
    _pruned_classes(model)
    layout = layout_of(model)
    heads, sizes = [], []
    for i, layer in enumerate(layout.layer_list(model)):
        head_size = layout.head_size(layer)
        width = layer.get_submodule(layout.attention_output).in_features
        rows = [(layer.get_submodule(p).out_features, chunks) for p, chunks in layout.head_projections_in(layer)]
        widths = {width, *(out / chunks for out, chunks in rows)}  # a fused Linear: `chunks` equal parts
        if len(widths) != 1 or width % head_size:
            raise ValueError(f"layer {i}: query/key/value/attention output widths {sorted(widths)} are not one "
                             f"whole number of heads of size {head_size}")
        up = layer.get_submodule(layout.ffn_up).out_features
        size = layout.ffn_size_in(layer)
        down = layer.get_submodule(layout.ffn_down).in_features
        if down != size or up != layout.ffn_chunks * size:
            raise ValueError(f"layer {i}: {layout.ffn_up} has {up} outputs ({layout.ffn_chunks} per neuron) but "
                             f"{layout.ffn_down} takes {down} inputs")
        heads.append(width // head_size)
        sizes.append(size)
    return {"attention_heads_per_layer": heads, "intermediate_size_per_layer": sizes}


def as_pruned_model(model, kept_heads: list[list[int]] | None = None, kept_layers: list[int] | None = None):
    """Turn, in place, a sequence classifier of a supported family whose Linears were already shrunk into its
    Pruned class.

    Afterwards `model.save_pretrained(path)` writes a directory that loads with
    `AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)`. `kept_heads` gives the
    original indices of the heads each layer kept; without it, an already-pruned model's record is kept if it still
    matches the head counts. `kept_layers`: the original indices of the layers kept, when whole layers were removed
    (the model's layer list and config already hold only those). Returns the model. Raises ValueError as `per_layer_structure` and the
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
    settings.pop("model_type")  # a class attribute (the family's own); passed as a kwarg it would shadow it
    if kept_layers is None:
        kept_layers = getattr(old_config, "kept_layers", None)
    settings.update(structure, kept_heads=kept_heads, kept_layers=kept_layers, architectures=[model_class.__name__])
    config = config_class(**settings)  # validates before the model is touched
    # to_dict leaves out the attention implementation; keep the one the model runs with.
    config._attn_implementation = old_config._attn_implementation

    layout = layout_of(model)
    for layer, heads in zip(layout.layer_list(model), structure["attention_heads_per_layer"]):
        layout.set_heads(layer, heads)
    model.__class__ = model_class
    # Submodules (the base model, every attention block) hold their own reference to the config.
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = config
    return model
