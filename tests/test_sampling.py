"""Sampler filters against small cases computed by hand from their definitions (probabilities
within 1e-12), seeded reproducibility, greedy ties, and a chi-square check of the draws."""
import numpy as np
import pytest

from vkinfer.sampling import Sampler

TOL = 1e-12


def probs_logits(*probs):
    """Logits whose softmax is `probs` (float64: the sampler takes any float array)."""
    return np.log(np.array(probs, dtype=np.float64))


def check_dist(sampler, logits, want_ids, want_probs, history=()):
    ids, probs = sampler.distribution(logits, history)
    assert list(ids) == want_ids
    np.testing.assert_allclose(probs, want_probs, rtol=0, atol=TOL)


def test_greedy_first_index_on_ties():
    assert Sampler().sample(np.array([1, 3, 2, 3], np.float32), []) == 1
    assert Sampler().sample(np.array([-np.inf, -5, -5], np.float32), []) == 1


def test_greedy_applies_repeat_penalty():
    logits = np.array([3.0, 2.9], np.float32)
    assert Sampler(repeat_penalty=1.5).sample(logits, [0]) == 1     # 3 / 1.5 = 2 < 2.9
    assert Sampler(repeat_penalty=1.5).sample(logits, [1]) == 0


def test_repeat_penalty_divides_positive_multiplies_negative():
    logits = np.array([2.0, -1.0, 0.5, 4.0], np.float32)
    s = Sampler(repeat_penalty=2.0)
    # each id once, however often it appears; ids out of range are ignored
    np.testing.assert_array_equal(s.penalized(logits, [1, 0, 0, 99]), [1.0, -2.0, 0.5, 4.0])
    # only the last repeat_last_n ids of the history count
    s = Sampler(repeat_penalty=2.0, repeat_last_n=1)
    np.testing.assert_array_equal(s.penalized(logits, [0, 1]), [2.0, -2.0, 0.5, 4.0])
    s = Sampler(repeat_penalty=2.0, repeat_last_n=0)
    np.testing.assert_array_equal(s.penalized(logits, [0, 1]), logits)
    s = Sampler(repeat_penalty=2.0, repeat_last_n=-1)
    np.testing.assert_array_equal(s.penalized(logits, [3] + [2] * 100), [2.0, -1.0, 0.25, 2.0])


def test_top_k():
    # softmax of logits 4 and 3: 1 / (1 + e^-1) and e^-1 / (1 + e^-1)
    a = 1 / (1 + np.exp(-1))
    check_dist(Sampler(temperature=1.0, top_k=2), np.arange(5, dtype=np.float32), [4, 3], [a, 1 - a])
    # ties at the cut go to the lower id
    check_dist(Sampler(temperature=1.0, top_k=2), np.array([0, 1, 1, 1], np.float32), [1, 2],
               [0.5, 0.5])


def test_top_p():
    logits = probs_logits(0.5, 0.3, 0.15, 0.05)
    check_dist(Sampler(temperature=1.0, top_p=0.75), logits, [0, 1], [0.5 / 0.8, 0.3 / 0.8])
    check_dist(Sampler(temperature=1.0, top_p=0.9), logits, [0, 1, 2],
               [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95])
    check_dist(Sampler(temperature=1.0, top_p=0.4), logits, [0], [1.0])   # the first crosses p
    check_dist(Sampler(temperature=1.0, top_p=0.0), logits, [0], [1.0])   # at least one
    check_dist(Sampler(temperature=1.0, top_p=1.0), logits, [0, 1, 2, 3], [0.5, 0.3, 0.15, 0.05])


def test_min_p():
    logits = probs_logits(0.15, 0.5, 0.05, 0.3)
    # threshold 0.2 * 0.5 = 0.1 keeps 0.5, 0.3, 0.15
    check_dist(Sampler(temperature=1.0, min_p=0.2), logits, [1, 3, 0],
               [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95])
    check_dist(Sampler(temperature=1.0, min_p=0.7), logits, [1], [1.0])   # 0.35: only 0.5


def test_temperature():
    logits = np.log(np.array([1.0, 2.0]))        # probabilities 1/3, 2/3
    check_dist(Sampler(temperature=1.0), logits, [1, 0], [2 / 3, 1 / 3])
    check_dist(Sampler(temperature=0.5), logits, [1, 0], [4 / 5, 1 / 5])  # logits x2: 1 : 4
    r = np.sqrt(2)                                                        # logits /2: 1 : sqrt 2
    check_dist(Sampler(temperature=2.0), logits, [1, 0], [r / (1 + r), 1 / (1 + r)])


def test_chain_order():
    # top-k renormalizes before top-p: 0.4, 0.3, 0.2 -> 4/9, 3/9, 2/9; p = 0.7 keeps 4/9 + 3/9
    check_dist(Sampler(temperature=1.0, top_k=3, top_p=0.7), probs_logits(0.4, 0.3, 0.2, 0.1),
               [0, 1], [4 / 7, 3 / 7])
    # top-p sees the distribution before temperature: cumulative 0.5, 0.8, 0.95 reaches 0.85 at
    # the third id; then temperature 0.5 squares the kept probabilities
    sq = np.array([0.5, 0.3, 0.15]) ** 2
    check_dist(Sampler(temperature=0.5, top_p=0.85), probs_logits(0.5, 0.3, 0.15, 0.05),
               [0, 1, 2], sq / sq.sum())
    # min-p after top-k: the max among the kept ids is the reference
    check_dist(Sampler(temperature=1.0, top_k=2, min_p=0.5), probs_logits(0.4, 0.1, 0.3, 0.2),
               [0, 2], [4 / 7, 3 / 7])


def test_n_valid_is_never_sampled():
    logits = np.array([0.0, 1.0, 50.0], np.float32)
    assert Sampler(n_valid=2).sample(logits, []) == 1
    s = Sampler(temperature=5.0, n_valid=2, seed=3)
    assert {s.sample(logits, []) for _ in range(200)} == {0, 1}
    check_dist(Sampler(temperature=1.0, n_valid=2), logits, [1, 0],
               [np.e / (1 + np.e), 1 / (1 + np.e)])


def test_seeded_reproducibility():
    logits = np.zeros(100, np.float32)
    a = Sampler(temperature=1.0, seed=123)
    b = Sampler(temperature=1.0, seed=123)
    c = Sampler(temperature=1.0, seed=124)
    seq_a = [a.sample(logits, []) for _ in range(50)]
    assert seq_a == [b.sample(logits, []) for _ in range(50)]
    assert seq_a != [c.sample(logits, []) for _ in range(50)]


def test_distribution_chi_square():
    want = np.array([0.5, 0.3, 0.2])
    s = Sampler(temperature=1.0, seed=2024)
    n = 20000
    counts = np.bincount([s.sample(np.log(want), []) for _ in range(n)], minlength=3)
    chi2 = np.sum((counts - n * want) ** 2 / (n * want))
    assert chi2 < 13.8, f"counts {counts} for {n * want} (chi2 {chi2:.1f}, 2 dof, p=0.001 at 13.8)"


def test_rejects_bad_input():
    with pytest.raises(ValueError, match="sampler"):
        Sampler(temperature=-1)
    with pytest.raises(ValueError, match="sampler"):
        Sampler(top_p=1.5)
    with pytest.raises(ValueError, match="sampler"):
        Sampler().sample(np.array([0.0, np.nan], np.float32), [])
    with pytest.raises(ValueError, match="sampler"):
        Sampler().sample(np.zeros((2, 3), np.float32), [])
