"""Where each architecture family keeps its attention heads and FFN neurons: one declared `Layout` per family.

A head h of size d owns output rows h*d:(h+1)*d of the query, key and value projections and input columns
h*d:(h+1)*d of the attention output projection; an FFN neuron j owns output row j of the up projection and input
column j of the down projection. What differs between families is where these Linears sit, whether some of them
are fused, what the attention module calls its head count and head size, and what the config calls the dense
sizes; that is all a layout declares. Everything that touches heads and neurons (`units`, `surgery`, the slimming
and activation hooks, `pruned_model`, the FLOP count) reads it from here instead of naming BERT's modules.

Two fused forms are declared with a number of *chunks*: the Linear's output rows are that many equal parts, and a
unit owns its rows in each part (`units.Slice.chunks`).
- A fused QKV projection (`fused_qkv`): rows [q heads | k heads | v heads], so with H live heads head h owns rows
  c*H*d + h*d ... + d for c = 0, 1, 2.
- A gated FFN (`gated_ffn`): up-projection rows [input half | gate half] (act(input) * gate), so with I live
  neurons neuron j owns rows j and I + j.

Families (checked on tiny configs in tests/test_families.py):
- BERT layout: BERT, RoBERTa, ELECTRA, XLM-RoBERTa (`encoder.layer[i].attention.self.query`, ...; transformers'
  modeling_bert.py and its copies in modeling_roberta/electra/xlm_roberta.py).
- DistilBERT: `transformer.layer[i].attention.q_lin/k_lin/v_lin/out_lin`, `ffn.lin1/lin2`
  (transformers' modeling_distilbert.py).
- DeBERTa-v2/v3: `encoder.layer[i].attention.self.query_proj/key_proj/value_proj`, `attention.output.dense`,
  `intermediate.dense`, `output.dense` (modeling_deberta_v2.py). With `share_att_key=False` and c2p / p2c in
  `pos_att_type` the attention also has `pos_key_proj` / `pos_query_proj`, which project the relative-position
  embeddings per head: optional head projections, shrunk with the heads. Its attention reshapes with the
  module attribute `num_attention_heads` (not the tensor's shape), so `set_heads` must keep it in step.
- ModernBERT: `layers[i].attn.Wqkv` (fused QKV), `attn.Wo`, `mlp.Wi` (gated), `mlp.Wo` (modeling_modernbert.py).
  Its attention reshapes with `view(..., 3, -1, head_dim)` and has no head-count attribute; rotary embeddings
  act on head_dim, which never changes; global and sliding-window layers differ only in their masks.
Every family therefore takes a different number of heads in each layer (eager and, where the family has it,
SDPA attention).

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
    query: str                   # Linears whose output rows h*d:(h+1)*d are head h's (with their bias entries);
    key: str | None              # with `fused_qkv`, `query` is the fused Linear and key, value are None
    value: str | None
    attention_output: str        # Linear whose input columns h*d:(h+1)*d are head h's
    ffn_up: str                  # Linear whose output row j (and bias entry j) is neuron j's (gated: j and I+j)
    ffn_down: str                # Linear whose input column j is neuron j's; its input is the activation
    heads_attribute: str | None  # on `attention`: the number of heads, kept in step (None: the family has none)
    head_size_attribute: str     # on `attention`: the head size d (never changes)
    width_attribute: str | None  # on `attention`: heads * d, kept in step (None: the family has none)
    config_heads: str            # the config's (dense) head count
    config_ffn: str              # the config's (dense) FFN size
    fused_qkv: bool = False      # `query` holds [q heads | k heads | v heads] in one Linear
    gated_ffn: bool = False      # `ffn_up` holds [input half | gate half]: neuron j owns rows j and I + j
    optional_head_projections: tuple[str, ...] = ()  # per-head output rows too, present only in some configs
    config_layers: str = "num_hidden_layers"  # the config's encoder layer count (kept in step with the list)
    first_layer_stays: bool = False  # layer 0 differs from the rest (built by index): LAYER_RATE never removes it
    # Modules whose input is the residual stream that the attention / FFN output projection is added to. None:
    # `query` and `ffn_up` themselves (post-LN families: each sublayer takes the residual as its input).
    residual_inputs: tuple[str, str] | None = None

    @property
    def head_projections(self) -> tuple[str, ...]:
        """(query, key, value), or (the fused QKV Linear,): the Linears every layer has whose output rows a head
        owns."""
        return tuple(p for p in (self.query, self.key, self.value) if p)

    @property
    def head_chunks(self) -> int:
        """Equal parts of `query`'s output rows, in each of which a head owns d rows: 3 when fused, else 1."""
        return 3 if self.fused_qkv else 1

    @property
    def ffn_chunks(self) -> int:
        """Equal parts of `ffn_up`'s output rows, in each of which a neuron owns one row: 2 when gated, else 1."""
        return 2 if self.gated_ffn else 1

    def residual_input(self, kind: str) -> str:
        """The module of a layer whose input is the residual that the "head" (attention) or "neuron" (FFN)
        output projection's output is added to."""
        if self.residual_inputs:
            return self.residual_inputs[0 if kind == "head" else 1]
        return self.query if kind == "head" else self.ffn_up

    def head_projections_in(self, layer: nn.Module) -> list[tuple[str, int]]:
        """[(path, chunks)] of every Linear of this layer whose output rows are per head: `head_projections`
        (the fused one with `head_chunks` parts, the others with 1), then the optional ones the layer has."""
        out = [(p, self.head_chunks if p == self.query else 1) for p in self.head_projections]
        for path in self.optional_head_projections:
            try:
                layer.get_submodule(path)
            except AttributeError:
                continue
            out.append((path, 1))
        return out

    def heads_in(self, layer: nn.Module) -> int:
        """The number of heads a layer's weights hold now (its query rows / (chunks x head size))."""
        return layer.get_submodule(self.query).out_features // (self.head_chunks * self.head_size(layer))

    def ffn_size_in(self, layer: nn.Module) -> int:
        """The number of FFN neurons a layer's weights hold now (its up projection's rows / chunks)."""
        return layer.get_submodule(self.ffn_up).out_features // self.ffn_chunks

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
        if self.heads_attribute:
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
                    config_layers="n_layers")
DEBERTA_V2 = Layout("DeBERTa-v2", ("deberta-v2",), "encoder.layer", "attention.self",
                    "attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                    "attention.output.dense", "intermediate.dense", "output.dense", "num_attention_heads",
                    "attention_head_size", "all_head_size", "num_attention_heads", "intermediate_size",
                    optional_head_projections=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
                    first_layer_stays=True)  # the optional conv applies after the first layer
MODERNBERT = Layout("ModernBERT", ("modernbert",), "layers", "attn", "attn.Wqkv", None, None, "attn.Wo",
                    "mlp.Wi", "mlp.Wo", None, "head_dim", None, "num_attention_heads", "intermediate_size",
                    fused_qkv=True, gated_ffn=True, first_layer_stays=True,  # layer 0: no attention LayerNorm
                    residual_inputs=("attn_norm", "mlp_norm"))  # pre-LN: x + attn(attn_norm(x)), then the MLP
LAYOUTS = (BERT, DISTILBERT, DEBERTA_V2, MODERNBERT)
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
