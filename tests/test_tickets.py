"""Lottery tickets: random and bad masks on hand-built cases, overlap and survival, and the study
end to end on a tiny model (tickets, rewinding, fixed masks, the report, re-running)."""
import json

import pytest
import torch

import lottery
from conftest import run_script, tiny_args
from pruning.run import checkpoint as state_io
from pruning.run.checkpoint import read_run_masks
from pruning.run.experiment import ConfigError
from pruning.run.trainer import SNAPSHOT_FILE
from pruning.studies import tickets


def counts(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def test_bad_keeps_the_lowest_scoring_units_with_the_good_counts():
    good = {"l.0.heads": torch.tensor([True, False, True, False]),
            "l.0.neurons": torch.tensor([True, True, True, False, False, True])}
    scores = {"l.0.heads": torch.tensor([4.0, 1.0, 3.0, 2.0]),
              "l.0.neurons": torch.tensor([0.5, 0.5, 9.0, 0.1, 7.0, 0.5])}   # ties at 0.5: the first ones
    bad = tickets.bad_mask(good, scores)
    assert bad["l.0.heads"].tolist() == [False, True, False, True]
    assert bad["l.0.neurons"].tolist() == [True, True, False, True, False, True]
    assert counts(bad) == counts(good)
    with pytest.raises(ValueError, match="one score per unit"):
        tickets.bad_mask(good, {"l.0.heads": scores["l.0.heads"]})


@pytest.mark.parametrize("seed", range(20))
def test_random_and_bad_keep_exactly_the_good_count_of_every_group(seed):
    g = torch.Generator().manual_seed(seed)
    shapes = {"bert.encoder.layer.0.attention.self.query.weight": (8, 8), "bert.encoder.layer.1.output.dense.weight": (4, 16),
              "bert.encoder.layer.1.heads": (12,)}
    good = {n: torch.rand(s, generator=g) < torch.rand(1, generator=g) for n, s in shapes.items()}
    scores = {n: torch.randint(0, 3, s, generator=g).float() for n, s in shapes.items()}   # many ties
    for mask in (tickets.random_mask(good, seed), tickets.bad_mask(good, scores)):
        assert counts(mask) == counts(good) and all(mask[n].shape == good[n].shape for n in good)
    assert all(torch.equal(tickets.random_mask(good, seed)[n], tickets.random_mask(good, seed)[n]) for n in good)


def test_random_masks_differ_between_seeds():
    good = {"l.0.neurons": torch.arange(100) < 50}
    assert not torch.equal(tickets.random_mask(good, 1)["l.0.neurons"], tickets.random_mask(good, 2)["l.0.neurons"])


def test_layer_overlaps_and_head_survival_on_hand_built_masks():
    a = {"x.layer.0.heads": torch.tensor([1, 1, 0, 0]).bool(), "x.layer.1.heads": torch.tensor([1, 0, 0, 0]).bool(),
         "x.layer.0.neurons": torch.tensor([1, 1, 1, 0, 0, 0]).bool(), "x.layer.1.neurons": torch.ones(6).bool()}
    b = {"x.layer.0.heads": torch.tensor([0, 1, 1, 0]).bool(), "x.layer.1.heads": torch.tensor([1, 0, 0, 0]).bool(),
         "x.layer.0.neurons": torch.tensor([1, 1, 1, 0, 0, 0]).bool(), "x.layer.1.neurons": torch.ones(6).bool()}
    heads = tickets.layer_overlaps(tickets.split_kind(a, "heads"), tickets.split_kind(b, "heads"))
    assert heads[0]["jaccard"] == pytest.approx(1 / 3) and heads[1]["jaccard"] == 1.0
    assert heads["all"]["jaccard"] == pytest.approx(2 / 4)      # shared {0.1, 1.0}; union {0.0, 0.1, 0.2, 1.0}
    assert heads[0]["chance_jaccard"] == pytest.approx(1 / 3)   # 2 of 4 twice: expected intersection 1
    rows = tickets.pairwise_overlaps({"s1": a, "s2": b})
    assert {(r["kind"], r["layer"]) for r in rows} == {(k, l) for k in ("heads", "neurons") for l in ("all", 0, 1)}
    assert [r["jaccard"] for r in rows if r["kind"] == "neurons"] == [1.0, 1.0, 1.0]
    survival = tickets.head_survival([a, b])
    assert survival.tolist() == [[0.5, 1.0, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]


def test_channel_tickets_keep_every_layers_count_and_bad_takes_the_lowest_scores():
    """A resnet.py-style mask (one group per convolution, named by module, no encoder layers): random and bad keep
    each group's count; bad keeps the lowest scores; overlaps are per group, in the groups' order."""
    good = {"resnet.embedder.embedder.convolution": torch.tensor([1, 0, 1, 1, 0, 0]).bool(),
            "resnet.encoder.stages.0.layers.0.layer.0.convolution": torch.tensor([0, 1, 0, 0]).bool(),
            "body.4": torch.tensor([1, 1, 1, 0, 0, 1, 0, 0]).bool()}
    scores = {"resnet.embedder.embedder.convolution": torch.tensor([6.0, 0.2, 5.0, 4.0, 0.1, 0.3]),
              "resnet.encoder.stages.0.layers.0.layer.0.convolution": torch.tensor([0.5, 9.0, 0.4, 0.6]),
              "body.4": torch.tensor([8.0, 7.0, 6.0, 0.0, 1.0, 5.0, 2.0, 3.0])}
    bad = tickets.bad_mask(good, scores)
    assert bad["resnet.embedder.embedder.convolution"].tolist() == [False, True, False, False, True, True]
    assert bad["resnet.encoder.stages.0.layers.0.layer.0.convolution"].tolist() == [False, False, True, False]
    assert bad["body.4"].tolist() == [False, False, False, True, True, False, True, True]
    for seed in range(10):
        random = tickets.random_mask(good, seed)
        assert counts(random) == counts(bad) == counts(good) and list(random) == list(good)
    rows = tickets.pairwise_overlaps({"s1": good, "s2": bad}, unit="channels")
    assert {(r["kind"], r["layer"]) for r in rows} == {("channels", l) for l in ("all", 0, 1, 2)}
    assert [r["jaccard"] for r in rows if r["layer"] != "all"] == [0.0, 0.0, 0.0]
    same = tickets.pairwise_overlaps({"s1": good, "s2": good}, unit="channels")
    assert [r["jaccard"] for r in same] == [1.0] * 4 and same[1]["chance"] == pytest.approx(1 / 3)  # 3 of 6 twice: 1.5 shared


def test_tickets_from_a_masks_file_link_the_early_bird_weights_and_need_scores_for_bad(tmp_path):
    good = {"x.layer.0.heads": torch.tensor([True, False, True, True]), "x.layer.0.neurons": torch.arange(8) < 3}
    meta = {"granularity": "heads+neurons", "criterion": "magnitude", "model": "m",
            "groups": {n: list(m.shape) for n, m in good.items()}}
    source = tmp_path / "run"
    state_io.write(str(source / state_io.MASKS_FILE), state_io.pack_masks(good, "keep/"), meta)  # no scores
    (source / SNAPSHOT_FILE).write_bytes(b"weights")
    made = tickets.write_tickets(source, tmp_path / "tickets", seed=3, kinds=("good", "random"))
    for kind, ticket in made.items():
        masks, scores, ticket_meta = read_run_masks(str(ticket))
        assert counts(masks) == counts(good) and scores is None and ticket_meta["ticket"] == kind
        assert (ticket / SNAPSHOT_FILE).read_bytes() == b"weights"
    with pytest.raises(ValueError, match="bad tickets need the scores"):
        tickets.write_tickets(source, tmp_path / "more", seed=3)
    assert not (tmp_path / "more").exists()


def test_bad_study_settings_are_one_clear_error_before_any_run(tmp_path):
    for argv, message in ((["--seed=3"], "lottery.py sets --seed for each of its runs; set --seeds instead"),
                          (["--criterion=dense"], "unknown pruning criterion 'dense'"),
                          (["--tickets=good,great"], "great not understood"),
                          (["--rewinds=start"], "start not understood"),
                          (["--seeds=1,1"], "distinct integers"),
                          (["--epochs=0"], "EPOCHS must be > 0"),
                          (["--pruning_rat=0.5"], "unknown setting --pruning_rat"),
                          (["--granularity=weights", "--pruning_rate=1.5"], r"pruning rate must be a number in \[0, 1\)")):
        with pytest.raises(ConfigError, match=message):
            lottery.settings([f"--out_dir={tmp_path}", *argv])
    assert not any(tmp_path.iterdir())


@pytest.fixture(scope="module")
def study(tiny_bert_config, sst2_slice, tmp_path_factory):
    """Two seeds, heads+neurons, magnitude tickets good and bad (random is the same code path as bad),
    rewound to the early-bird weights (from pretrained is MASK_FROM's default, tested elsewhere), and
    gradient for the between-criteria overlap: 10 runs."""
    out = tmp_path_factory.mktemp("lottery")
    argv = [f"--out_dir={out}", "--seeds=1,2", "--tickets=good,bad", "--rewinds=early_bird", "--compare_with=gradient",
            "--epochs=1",
            *[a for a in tiny_args(tiny_bert_config, sst2_slice, out, head_rate=0.5, neuron_rate=0.5)
              if not a.startswith("--out_dir=")]]
    lottery.main(argv)
    return out, argv


def results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_study_trains_every_ticket_from_both_starting_points_and_reports(study):
    out, _ = study
    names = {p.name for p in out.iterdir() if (p / "results.json").exists()}
    assert names == {f"{run}-s{seed}" for seed in (1, 2) for run in
                     ("eb-magnitude", "eb-gradient", "dense", "good-early_bird", "bad-early_bird")}
    for seed in (1, 2):
        good, scores, _ = read_run_masks(str(out / f"eb-magnitude-s{seed}"))
        ticket_good = read_run_masks(str(out / "tickets" / f"s{seed}" / "good"))[0]
        ticket_bad = read_run_masks(str(out / "tickets" / f"s{seed}" / "bad"))[0]
        assert all(torch.equal(good[n], ticket_good[n]) for n in good)
        assert counts(ticket_bad) == counts(good) and any(not torch.equal(ticket_bad[n], good[n]) for n in good)
        assert all(torch.equal(ticket_bad[n], tickets.bad_mask(good, scores)[n]) for n in good)
        for kind, mask in (("good", good), ("bad", ticket_bad)):
            r = results(out / f"{kind}-early_bird-s{seed}")
            # trained with the mask fixed: the same heads and neurons at the end as in the ticket
            kept = read_run_masks(str(out / f"{kind}-early_bird-s{seed}"))[0]
            assert all(torch.equal(kept[n], mask[n]) for n in mask)
            assert r["pruning"]["structure"]["heads_kept"] == [
                torch.nonzero(mask[n]).flatten().tolist() for n in sorted(mask) if n.endswith(".heads")]
            assert r["optimizer_steps"] == results(out / f"dense-s{seed}")["optimizer_steps"] == 20
        # rewinding restores exactly the stored weights: masked, they evaluate as the source did at pruning
        source, rewound = results(out / f"eb-magnitude-s{seed}"), results(out / f"good-early_bird-s{seed}")
        assert rewound["metrics"]["after_prune"] == source["metrics"]["after_prune"]
    md = (out / "lottery.md").read_text()
    for expected in ("| dense (no mask) |", "| good |", "| bad |", "| good, early-bird / bad, early-bird | 2 |",
                     "| between seeds | magnitude | heads | all |", "| between criteria | gradient / magnitude | neurons",
                     "| layer | heads, between seeds | heads, between criteria |", "kept by every seed"):
        assert expected in md, expected
    assert (out / "lottery_accuracy.png").stat().st_size > 5000 and (out / "lottery_stability.png").stat().st_size > 5000


def test_rerunning_the_study_skips_finished_runs_and_rebuilds_the_report(study):
    out, argv = study
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")}
    (out / "lottery.md").unlink()
    lottery.main(argv)
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/results.json")} == before
    assert "| good |" in (out / "lottery.md").read_text()


def test_mask_from_a_run_of_another_model_is_one_clear_error(study, tiny_bert_config, sst2_slice, tmp_path):
    out, _ = study
    bigger = tmp_path / "bigger.json"
    bigger.write_text(json.dumps({**json.loads(tiny_bert_config.read_text()), "intermediate_size": 96}))
    proc = run_script("bert.py", tiny_args(bigger, sst2_slice, tmp_path, run_name="other", granularity="heads+neurons",
                                           mask_from=out / "tickets" / "s1" / "good"))
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "holds a mask for another model" in errors[0] and not (tmp_path / "other").exists()
