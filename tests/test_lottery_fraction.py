"""lottery.py with PROCEDURE="to_fraction" (Prasanna et al.'s own procedure): its settings and plan, and the study
end to end on a tiny model (the search, the tickets, their training, the report), heads-only tickets trained and
tickets that remove whole MLPs refused with the trainer's reason."""
import json

import pytest
import torch

import lottery
from conftest import tiny_args
from pruning.run.checkpoint import read_run_masks
from pruning.run.experiment import ConfigError
from pruning.studies import to_fraction


def test_bad_to_fraction_settings_are_one_clear_error_before_any_run(tmp_path):
    for argv, message in ((["--procedure=fraction"], "choose one of early_bird, to_fraction"),
                          (["--procedure=to_fraction", "--rewinds=early_bird"], "no early-bird weights to rewind to"),
                          (["--procedure=to_fraction", "--step=1.5"], r"STEP must be in \(0, 1\)"),
                          (["--procedure=to_fraction", "--mlp_step=-1"], "MLP_STEP must be >= 0"),
                          (["--procedure=to_fraction", "--keep_fraction=0"], r"KEEP_FRACTION must be in \(0, 1\]"),
                          (["--procedure=to_fraction", "--importance_abs=max"], "choose one of sum, batch"),
                          (["--procedure=to_fraction", f"--other_studies={tmp_path / 'nope'}"], "holds no tickets/")):
        with pytest.raises(ConfigError, match=message):
            lottery.settings([f"--out_dir={tmp_path}", *argv])
    assert not any(tmp_path.iterdir())


def test_the_to_fraction_plan_trains_the_full_model_then_the_tickets_from_the_pretrained_weights(tmp_path):
    config, passed_on = lottery.settings([f"--out_dir={tmp_path}", "--procedure=to_fraction", "--seeds=1,2"])
    assert config["REWINDS"] == ["pretrained"]
    names = [name for name, _, _ in lottery.runs(config, passed_on)]
    assert names == [f"{run}-s{seed}" for seed in (1, 2) for run in
                     ("dense", "good-pretrained", "random-pretrained", "bad-pretrained")]
    early, _ = lottery.settings([f"--out_dir={tmp_path}"])
    assert early["REWINDS"] == ["pretrained", "early_bird"]


def study_argv(out, config, data, *more):
    return [f"--out_dir={out}", "--procedure=to_fraction", "--seeds=1,2", "--pattern_sentences=20",
            "--importance_examples=64",
            *[a for a in tiny_args(config, data, out) if not a.startswith(("--out_dir=", "--retrain_epochs",
                                                                            "--search_epochs"))], *more]


@pytest.fixture(scope="module")
def four_heads(tmp_path_factory, tiny_bert_config):
    path = tmp_path_factory.mktemp("configs") / "four-heads.json"
    path.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "num_attention_heads": 4}))
    return path


@pytest.fixture(scope="module")
def study(four_heads, sst2_slice, tmp_path_factory):
    """Two seeds, heads only (MLP_STEP=0, so the tickets train), good and bad tickets: 6 runs and 2 searches."""
    out = tmp_path_factory.mktemp("fraction")
    argv = study_argv(out, four_heads, sst2_slice, "--mlp_step=0", "--tickets=good,bad", "--keep_fraction=0.8")
    lottery.main(argv)
    return out, argv


def test_the_study_searches_writes_tickets_trains_them_and_reports(study):
    out, _ = study
    names = {p.name for p in out.iterdir() if (p / "results.json").exists()}
    assert names == {f"{run}-s{seed}" for seed in (1, 2) for run in ("dense", "good-pretrained", "bad-pretrained")}
    for seed in (1, 2):
        curve = json.loads((out / "search" / f"s{seed}" / to_fraction.CURVE_FILE).read_text())
        assert curve["done"] and curve["settings"]["source"].endswith(f"dense-s{seed}")
        heads = [p["heads"] for p in curve["curve"]]
        assert all(a - b == to_fraction.heads_to_remove(a, 0.1) for a, b in zip(heads, heads[1:]))
        assert all(p["mlps"] == 2 for p in curve["curve"])
        ticket = curve["curve"][curve["ticket_iteration"]]
        assert ticket["meets"] and all(p["meets"] for p in curve["curve"][:curve["ticket_iteration"] + 1])
        good = read_run_masks(str(out / "tickets" / f"s{seed}" / "good"))[0]
        bad = read_run_masks(str(out / "tickets" / f"s{seed}" / "bad"))[0]
        assert to_fraction.counts(good)["heads"] == ticket["heads"]
        assert {n: int(m.sum()) for n, m in bad.items()} == {n: int(m.sum()) for n, m in good.items()}
        trained = read_run_masks(str(out / f"good-pretrained-s{seed}"))[0]   # trained with the ticket fixed
        assert trained.keys() == good.keys() and all(torch.equal(trained[n], good[n]) for n in trained)
        assert (out / "search" / f"s{seed}" / lottery.PATTERNS_FILE).exists()
    md = (out / "lottery.md").read_text()
    for expected in ("# Lottery tickets: to 0.8 of the full score", "| good |", "| bad |",
                     "## Tickets at 0.8 of the full model's accuracy", "| seeds | SST-2 | heads | 1 |",
                     "| heterogeneous |", "good-ticket heads by chance", "| good, pretrained / bad, pretrained | 2 |"):
        assert expected in md, expected
    summary = json.loads((out / "lottery_fraction.json").read_text())
    assert set(summary["seeds"]) == {"1", "2"} and summary["patterns"]["sentences"] == {"1": 20, "2": 20}
    assert sum(r["all"] for r in summary["patterns"]["pooled"]) == 2 * 2 * 4   # seeds x layers x heads
    for png in ("lottery_search.png", "lottery_survival.png", "lottery_patterns.png", "lottery_accuracy.png"):
        assert (out / png).stat().st_size > 5000, png


def test_rerunning_the_study_searches_nothing_again(study):
    out, argv = study
    files = [out / "search" / "s1" / to_fraction.STATE_FILE, *out.glob("tickets/s*/*/masks.safetensors"),
             *out.glob("*/results.json")]
    before = {p: p.stat().st_mtime_ns for p in files}
    (out / "lottery.md").unlink()
    lottery.main(argv)
    assert {p: p.stat().st_mtime_ns for p in files} == before and (out / "lottery.md").exists()


def test_a_study_of_another_task_adds_overlaps_between_tasks(study, tmp_path):
    out, argv = study
    config, _ = lottery.settings([*argv, f"--other_studies={out}"])
    text = lottery.write(out, config)
    assert "| tasks | SST-2 / SST-2 (" in text   # the same study again, named apart: a pair per two seeds
    rows = [r for r in json.loads((out / "lottery_fraction.json").read_text())["overlaps"] if r["between"] == "tasks"]
    assert len([r for r in rows if r["kind"] == "heads"]) == 4
    assert all(r["jaccard"] == 1.0 for r in rows if r["seed_a"] == r["seed_b"])


def test_tickets_that_remove_whole_mlps_are_searched_trained_and_reported(four_heads, sst2_slice, tmp_path):
    argv = study_argv(tmp_path, four_heads, sst2_slice, "--seeds=1", "--tickets=good", "--keep_fraction=0.01")
    lottery.main(argv)
    curve = json.loads((tmp_path / "search" / "s1" / to_fraction.CURVE_FILE).read_text())
    assert [p["mlps"] for p in curve["curve"]][:3] == [2, 1, 0]
    assert curve["done"] and curve["curve"][-1]["heads"] == 2       # one head per layer left, nothing to remove
    good = read_run_masks(str(tmp_path / "tickets" / "s1" / "good"))[0]
    assert good["bert.encoder.layer.mlps"].tolist() == [False, False]
    trained = json.loads((tmp_path / "good-pretrained-s1" / "results.json").read_text())["pruning"]["structure"]
    assert trained["mlps_kept"] == [] and trained["neurons_kept_per_layer"] == [0, 0]
    assert "## Tickets at 0.01 of the full model's accuracy" in (tmp_path / "lottery.md").read_text()


def test_iterative_magnitude_pruning_to_the_fraction_trains_its_weights_ticket(four_heads, sst2_slice, tmp_path):
    """GRANULARITY=weights: 10% of the remaining weights a step by global magnitude; the ticket trains fixed."""
    lottery.main(study_argv(tmp_path, four_heads, sst2_slice, "--seeds=1", "--tickets=good", "--granularity=weights",
                            "--pattern_sentences=0"))
    curve = json.loads((tmp_path / "search" / "s1" / to_fraction.CURVE_FILE).read_text())
    kept = [p["weights"] for p in curve["curve"]]
    assert kept[0] == curve["curve"][0]["weights_total"] and len(kept) > 2
    assert all(a - b == max(1, round(0.1 * a)) for a, b in zip(kept, kept[1:]))
    good = read_run_masks(str(tmp_path / "tickets" / "s1" / "good"))[0]
    assert sum(int(m.sum()) for m in good.values()) == kept[curve["ticket_iteration"]]
    trained = read_run_masks(str(tmp_path / "good-pretrained-s1"))[0]
    assert trained.keys() == good.keys() and all(torch.equal(trained[n], good[n]) for n in good)
    assert "| seed | full | steps to the ticket | weights kept |" in (tmp_path / "lottery.md").read_text()
    assert not (tmp_path / "lottery_survival.png").exists() and not (tmp_path / "search" / "s1" / "patterns.npz").exists()
