"""The Early-Bird detector on synthetic mask sequences with known answers."""
import numpy as np
import pytest
import torch

from earlybird import EarlyBirdDetector, hamming_distance, mask_fingerprint, pack_mask, unpack_mask


def flip(mask: np.ndarray, n: int, offset: int = 0) -> np.ndarray:
    out = mask.copy()
    out[offset:offset + n] = ~out[offset:offset + n]
    return out


def test_hamming_distance_counts_differing_positions_exactly():
    a = np.zeros(1001, dtype=bool)          # not a multiple of 8: padding bits must not count
    b = flip(a, 37, offset=500)
    assert hamming_distance(pack_mask(a), pack_mask(b), 1001) == pytest.approx(37 / 1001)
    assert hamming_distance(pack_mask(a), pack_mask(a), 1001) == 0.0


def test_pack_round_trip_and_fingerprint():
    mask = torch.rand(1234) > 0.3
    assert torch.equal(unpack_mask(pack_mask(mask), 1234), mask)
    assert mask_fingerprint(pack_mask(mask)) == mask_fingerprint(pack_mask(mask.clone()))
    assert mask_fingerprint(pack_mask(mask)) != mask_fingerprint(pack_mask(flip(mask.numpy(), 1)))


def test_fires_on_first_check_where_all_window_distances_are_below_epsilon():
    n = 1000
    det = EarlyBirdDetector(window=5, epsilon=0.1)
    base = np.zeros(n, dtype=bool)
    # Masks move by 300, 200, 150 positions, then settle: each later mask differs by 10 positions.
    seq = [base, flip(base, 300), flip(base, 500), flip(base, 650)]
    seq += [flip(seq[-1], 10 * k, offset=650) for k in range(1, 6)]
    fired = [det.update(m, step=10 * (i + 1)) for i, m in enumerate(seq)]
    # Check 7 still holds seq[2] (500 flipped) against 680 flipped: 0.18. At check 8 (step 80) the
    # FIFO is seq[3..7] and the newest differs from the others by 40, 30, 20, 10 positions.
    assert det.found_step == 80
    assert fired == [False] * 7 + [True, True]
    last = det.history[7]
    assert last["distances"] == pytest.approx([0.04, 0.03, 0.02, 0.01])
    assert last["max_distance"] == pytest.approx(0.04)


def test_needs_a_full_window_before_firing():
    det = EarlyBirdDetector(window=4, epsilon=0.5)
    mask = np.ones(64, dtype=bool)
    assert [det.update(mask, s) for s in (1, 2, 3, 4)] == [False, False, False, True]
    assert det.found_step == 4


def test_never_fires_when_masks_keep_moving():
    rng = np.random.default_rng(0)
    det = EarlyBirdDetector(window=5, epsilon=0.1)
    for step in range(50):
        det.update(rng.random(500) > 0.5, step)   # independent masks: distance ~0.5
    assert not det.found
    assert all(h["max_distance"] > 0.4 for h in det.history[1:])


def test_distance_equal_to_epsilon_does_not_fire():
    det = EarlyBirdDetector(window=2, epsilon=0.1)
    base = np.zeros(100, dtype=bool)
    det.update(base, 1)
    assert not det.update(flip(base, 10), 2)           # exactly 0.1 is not below 0.1
    assert det.update(flip(base, 19), 3)               # 0.09 < 0.1


def test_state_dict_round_trip_continues_identically():
    rng = np.random.default_rng(1)
    masks = [rng.random(300) > 0.5 for _ in range(3)] + [np.ones(300, dtype=bool)] * 4
    a = EarlyBirdDetector(window=3, epsilon=0.2)
    for i, m in enumerate(masks[:4]):
        a.update(m, i)
    b = EarlyBirdDetector(window=3, epsilon=0.2)
    b.load_state_dict(a.state_dict())
    for i, m in enumerate(masks[4:], start=4):
        assert a.update(m, i) == b.update(m, i)
    assert a.history == b.history and a.found_step == b.found_step == 5


@pytest.mark.parametrize("window,epsilon", [(1, 0.1), (0, 0.1), (5, 0.0), (5, -0.1), (2.5, 0.1)])
def test_rejects_bad_settings(window, epsilon):
    with pytest.raises(ValueError, match="window|epsilon"):
        EarlyBirdDetector(window=window, epsilon=epsilon)


def test_rejects_masks_of_different_sizes():
    det = EarlyBirdDetector()
    det.update(np.ones(10, dtype=bool), 1)
    with pytest.raises(ValueError, match="11 weights"):
        det.update(np.ones(11, dtype=bool), 2)


def test_distance_to_reference_is_recorded_and_survives_a_state_round_trip():
    base = np.zeros(200, dtype=bool)
    det = EarlyBirdDetector(window=2, epsilon=0.1)
    det.set_reference(base)
    det.update(flip(base, 20), 1)
    assert det.history[-1]["distance_to_reference"] == pytest.approx(0.1)
    again = EarlyBirdDetector(window=2, epsilon=0.1)
    again.load_state_dict(det.state_dict())
    again.update(flip(base, 50), 2)
    assert again.history[-1]["distance_to_reference"] == pytest.approx(0.25)


def test_settled_is_about_the_newest_check_while_found_is_latched():
    det = EarlyBirdDetector(window=2, epsilon=0.1)
    base = np.zeros(100, dtype=bool)
    det.update(base, 1)
    assert not det.settled                              # FIFO not full yet
    det.update(flip(base, 5), 2)
    assert det.settled and det.found_step == 2
    det.update(flip(base, 50), 3)                       # the mask moves again
    assert not det.settled and det.found               # "found" stays latched; "settled" does not
