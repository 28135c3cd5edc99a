"""Kovaleva et al.'s five attention-pattern types by the stated rule, on hand-built maps of each type; the shares
of types among kept and pruned heads with Fisher's test; maps from a tiny model with eager attention."""
import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from pruning.studies import patterns

N = 16
SPECIAL = torch.zeros(N, dtype=torch.bool)
SPECIAL[[0, 8, 15]] = True             # [CLS] 7 words [SEP] 6 words [SEP]
SEGMENTS = torch.tensor([0] * 9 + [1] * 7)


def rows(weights):
    a = torch.as_tensor(weights, dtype=torch.float)
    return a / a.sum(-1, keepdim=True)


def vertical():
    a = torch.full((N, N), 0.01)
    a[:, [0, 8, 15]] = 1.0      # nearly all mass on [CLS] and [SEP]
    return rows(a)


def diagonal():
    a = torch.full((N, N), 0.005)
    for i in range(N):
        a[i, max(i - 1, 0)] += 1.0   # the previous token
    return rows(a)


def vertical_diagonal():
    a = torch.full((N, N), 0.005)
    for i in range(N):
        a[i, min(i + 1, N - 1)] += 0.5
        a[i, 15] += 0.5              # next token and the last [SEP]
    return rows(a)


def block():
    a = torch.full((N, N), 0.001)
    a[1:8, 1:8] = a[9:15, 9:15] = 1.0   # each sentence attends inside itself
    a[0, 1:8] = a[8, 1:8] = a[15, 9:15] = 1.0
    return rows(a)


def heterogeneous():
    return rows(torch.rand(N, N, generator=torch.Generator().manual_seed(0)) + 0.1)


@pytest.mark.parametrize("kind, make", [("vertical", vertical), ("diagonal", diagonal),
                                        ("vertical+diagonal", vertical_diagonal), ("block", block),
                                        ("heterogeneous", heterogeneous)])
def test_each_hand_built_map_gets_its_type(kind, make):
    assert patterns.classify_map(make(), SPECIAL, SEGMENTS) == kind


def test_region_masses_add_up_and_block_needs_a_pair():
    m = patterns.region_masses(torch.stack([vertical(), diagonal(), block()]), SPECIAL, SEGMENTS)
    assert torch.allclose(sum(m.values()), torch.ones(3))
    # rows of the 13 words; the first word's previous token is [CLS], the word after [SEP] follows [SEP]: region A
    assert m["V"][0] > 0.75 and m["D"][1] == pytest.approx(11 / 13 / 1.08, abs=0.02)
    assert m["A"][1] == pytest.approx(2 / 13 / 1.08, abs=0.02)   # (the background 16 x 0.005 takes the rest)
    assert m["D"][2] + m["B"][2] > 0.95 and m["X"][2] < 0.01
    assert patterns.classify_map(block(), SPECIAL, None) == "heterogeneous"   # one segment: no block
    t = patterns.Thresholds()
    assert patterns.classify({"V": 0.5, "D": 0.19, "B": 0.31, "X": 0}, False, t) == "vertical"
    assert patterns.classify({"V": 0.45, "D": 0.19, "B": 0.36, "X": 0}, False, t) == "heterogeneous"
    assert patterns.classify({"V": 0.19, "D": 0.5, "B": 0.31, "X": 0}, False, t) == "diagonal"
    assert patterns.classify({"V": 0.3, "D": 0.3, "B": 0.4, "X": 0}, False, t) == "vertical+diagonal"
    assert patterns.classify({"V": 0.1, "D": 0.3, "B": 0.4, "X": 0.2}, True, t) == "heterogeneous"  # 0.7 < 4 x 0.2
    assert patterns.classify({"V": 0.1, "D": 0.3, "B": 0.45, "X": 0.15}, True, t) == "block"
    assert patterns.classify({"V": 0.1, "D": 0.3, "B": 0.45, "X": 0.15}, False, t) == "heterogeneous"
    assert patterns.classify({"V": 0.1, "D": 0.45, "B": 0.15, "X": 0.0}, True, t) == "heterogeneous"  # B < 0.2


def test_shares_and_fishers_test_against_chance():
    types = np.array([[0, 0, 0, 0], [4, 4, 4, 4]])      # layer 0 vertical, layer 1 heterogeneous
    kept = np.array([[True] * 4, [False] * 4])
    rows_ = {r["type"]: r for r in patterns.shares(types, kept)}
    assert rows_["vertical"]["kept"] == 4 and rows_["vertical"]["kept_share"] == 1.0
    assert rows_["vertical"]["pruned_share"] == 0.0 and rows_["vertical"]["all_share"] == 0.5
    assert rows_["vertical"]["expected_kept"] == 2.0
    assert rows_["vertical"]["p"] == pytest.approx(2 / 70)    # hypergeometric: 1 of C(8,4) = 70 draws, two-sided
    assert rows_["diagonal"]["all"] == 0 and rows_["diagonal"]["p"] == 1.0
    random_kept = np.array([[True, False, True, False], [True, False, True, False]])
    assert {r["type"]: r["p"] for r in patterns.shares(types, random_kept)}["vertical"] == 1.0


def test_a_tiny_models_heads_are_classified_from_eager_attention_maps(tmp_path):
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=60, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=16,
        max_position_embeddings=32, attn_implementation="eager")).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 60, (3, 8), generator=g)
    ids[:, 0], ids[:, -1] = 1, 2
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[2, 6:] = 0     # a padded sentence: its padding is left out
    ids[2, 5] = 2
    result = patterns.head_patterns(model, [{"input_ids": ids, "attention_mask": mask}], special_ids=[1, 2])
    assert result.counts.shape == (2, 4, 5) and result.sentences == 3
    assert (result.counts.sum(-1) == 3).all()
    assert result.example.shape == (2, 4, 8, 8)
    assert np.allclose(sum(result.masses.values()), 1.0, atol=1e-5)
    patterns.plot_examples(result, tmp_path / "examples.png", kept=np.ones((2, 4), dtype=bool))
    assert (tmp_path / "examples.png").stat().st_size > 3000
    sdpa = BertForSequenceClassification(BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=4, intermediate_size=16,
                                                    attn_implementation="sdpa")).eval()
    with pytest.raises(ValueError, match="attn_implementation='eager'"):   # SDPA returns no maps
        patterns.head_patterns(sdpa, [{"input_ids": ids, "attention_mask": mask}], special_ids=[1, 2])
