"""Where each architecture family keeps its attention heads and FFN neurons: one declared `Layout` per family.

A head h of size d owns output rows h*d:(h+1)*d of the query, key and value projections and input columns
h*d:(h+1)*d of the attention output projection; an FFN neuron j owns output row j of the up projection and input
column j of the down projection. What differs between families is only where these Linears sit, what the
attention module calls its head count and head size, and what the config calls the dense sizes; that is all a
layout declares. Everything that touches heads and neurons (`units`, `surgery`, the slimming and activation
hooks, `pruned_model`, the FLOP count) reads it from here instead of naming BERT's modules.

Families (checked on tiny configs in tests/test_families.py):
- BERT layout: BERT, RoBERTa, ELECTRA, XLM-RoBERTa (`encoder.layer[i].attention.self.query`, ...; transformers'
  modeling_bert.py and its copies in modeling_roberta/electra/xlm_roberta.py).
- DistilBERT: `transformer.layer[i].attention.q_lin/k_lin/v_lin/out_lin`, `ffn.lin1/lin2`
  (transformers' modeling_distilbert.py).
All of them compute attention through `view(..., -1, head_size)`, so a layer may keep any number of heads.

This file is copied next to every saved heads+neurons model together with `pruned_model.py`, which imports it;
it therefore depends only on torch and the standard library.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Layout:
    """Where one family's prunable units live. Module paths are dotted names relative to one encoder layer,
    except `layers`, which is relative to the base model (`model.base_model`)."""
    name: str                    # the family, as error messages and docs name it
    model_types: tuple[str, ...]  # the `config.model_type` values of the family
    layers: str                  # the nn.ModuleList of encoder layers, e.g. "encoder.layer"
    attention: str               # the module holding the head count / head size attributes
    query: str                   # Linears whose output rows h*d:(h+1)*d are head h's (with their bias entries)
    key: str
    value: str
    attention_output: str        # Linear whose input columns h*d:(h+1)*d are head h's
    ffn_up: str                  # Linear whose output row j (and bias entry j) is neuron j's
    ffn_down: str                # Linear whose input column j is neuron j's; its input is the activation
    heads_attribute: str         # on `attention`: the number of heads (kept in step with the weights)
    head_size_attribute: str     # on `attention`: the head size d (never changes)
    width_attribute: str | None  # on `attention`: heads * d, kept in step (None: the family has none)
    config_heads: str            # the config's (dense) head count
    config_ffn: str              # the config's (dense) FFN size
    config_layers: str = "num_hidden_layers"  # the config's encoder layer count (kept in step with the list)

    @property
    def head_projections(self) -> tuple[str, str, str]:
        """(query, key, value): the Linears whose output rows a head owns."""
        return self.query, self.key, self.value

    def layer_list(self, model: nn.Module) -> list[nn.Module]:
        """The encoder layers of `model` (a task model or its base model), first to last."""
        return list(getattr(model, "base_model", model).get_submodule(self.layers))

    def layers_prefix(self, model: nn.Module) -> str:
        """Qualified name of the layer list inside `model`, e.g. "bert.encoder.layer" for a classifier."""
        base = getattr(model, "base_model", model)
        prefix = getattr(model, "base_model_prefix", "")
        return f"{prefix}.{self.layers}" if prefix and base is not model else self.layers

    def head_size(self, layer: nn.Module) -> int:
        """The head size d of one layer's attention."""
        return getattr(layer.get_submodule(self.attention), self.head_size_attribute)

    def set_heads(self, layer: nn.Module, heads: int) -> None:
        """Record on one layer's attention module that it now has `heads` heads (its weights already do)."""
        attention = layer.get_submodule(self.attention)
        setattr(attention, self.heads_attribute, heads)
        if self.width_attribute:
            setattr(attention, self.width_attribute, heads * getattr(attention, self.head_size_attribute))


BERT = Layout("BERT", ("bert", "roberta", "electra", "xlm-roberta"), "encoder.layer", "attention.self",
              "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
              "intermediate.dense", "output.dense", "num_attention_heads", "attention_head_size", "all_head_size",
              "num_attention_heads", "intermediate_size")
DISTILBERT = Layout("DistilBERT", ("distilbert",), "transformer.layer", "attention",
                    "attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin",
                    "ffn.lin1", "ffn.lin2", "n_heads", "attention_head_size", None, "n_heads", "hidden_dim",
                    "n_layers")
LAYOUTS = (BERT, DISTILBERT)
BY_MODEL_TYPE = {t: layout for layout in LAYOUTS for t in layout.model_types}


def supported_model_types() -> str:
    """The model types the structured path knows, for messages: "bert, roberta, ..., distilbert"."""
    return ", ".join(BY_MODEL_TYPE)


def layout_of(model_or_config) -> Layout:
    """The layout of a model (or of its config), by `config.model_type`; a "pruned_" prefix (models saved before
    the layouts existed) is ignored. Raises ValueError naming the known model types for any other."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = str(getattr(config, "model_type", "") or "").removeprefix("pruned_")
    if model_type not in BY_MODEL_TYPE:
        name = type(model_or_config).__name__
        raise ValueError(f"granularity 'heads+neurons' knows the layers of model types {supported_model_types()}; "
                         f"{name} (model type {model_type or 'unknown'!r}) is not one of them. "
                         "Use GRANULARITY='weights', which prunes any AutoModelForSequenceClassification.")
    return BY_MODEL_TYPE[model_type]
