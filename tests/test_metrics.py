"""Recall under ties, checked against cases worked out by hand."""

import numpy as np
import polars as pl
import pytest

from trsllava.evaluation.metrics import expected_hit, optimistic_hit, pessimistic_hit, recalls, with_ranks
from trsllava.evaluation.protocol import tie_counts


@pytest.mark.parametrize(
    "above, tied_other, tied_relevant, k, expected",
    [
        (0, 0, 1, 1, 1.0),  # alone at the top
        (1, 0, 1, 1, 0.0),  # one item strictly better
        (2, 3, 1, 5, 0.75),  # 4 tie positions 3..6, hit if at 3, 4 or 5: 3/4
        (2, 3, 1, 1, 0.0),
        (2, 3, 1, 10, 1.0),  # the whole tie group fits
        (0, 3, 2, 1, 0.4),  # 2 relevant among 5 shuffled: first position relevant with p = 2/5
        (0, 3, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (0, 1, 2, 1, 2 / 3),
        (4, 10, 5, 5, 1 / 3),  # one slot left, 5 relevant among 15 tied: 1 - C(10,1)/C(15,1)
        (9, 0, 1, 10, 1.0),
        (10, 0, 1, 10, 0.0),
    ],
)
def test_expected_hit_hand_cases(above, tied_other, tied_relevant, k, expected):
    value = expected_hit(np.array([above]), np.array([tied_other]), np.array([tied_relevant]), k)[0]
    assert value == pytest.approx(expected, abs=1e-12)


def test_bounds_bracket_expected():
    above, n, r = np.array([0, 2, 2, 0]), np.array([0, 3, 3, 9]), np.array([1, 1, 1, 1])
    for k in (1, 5, 10):
        low, mid, high = pessimistic_hit(above, n, r, k), expected_hit(above, n, r, k), optimistic_hit(above, n, r, k)
        assert np.all(low <= mid) and np.all(mid <= high)
    assert list(optimistic_hit(above, n, r, 1)) == [1, 0, 0, 1]
    assert list(pessimistic_hit(above, n, r, 10)) == [1, 1, 1, 1]  # last of a 10-item tie is rank 10
    assert list(pessimistic_hit(above, n, r, 5)) == [1, 0, 0, 0]


def test_tie_counts_with_several_relevant_and_tolerance():
    scores = np.array([[0.9, 0.5, 0.9, 0.9 + 1e-8, 0.95, 0.2]])
    relevant = np.array([[True, True, False, False, False, True]])
    above, tied_other, tied_relevant = tie_counts(scores, relevant, tolerance=1e-6)
    assert (above[0], tied_other[0], tied_relevant[0]) == (1, 2, 1)
    above, tied_other, tied_relevant = tie_counts(scores, relevant, tolerance=0.0)
    assert (above[0], tied_other[0], tied_relevant[0]) == (2, 1, 1)


def test_ranks_and_recalls_from_counts():
    stats = pl.DataFrame(
        {
            "direction": ["t2i", "t2i", "i2t", "i2t"],
            "above": [0, 1, 0, 12],
            "tied_other": [1, 0, 1, 0],
            "tied_relevant": [1, 1, 2, 1],
        }
    )
    ranked = with_ranks(stats)
    assert ranked["rank_optimistic"].to_list() == [1, 2, 1, 13]
    assert ranked["rank_pessimistic"].to_list() == [2, 2, 2, 13]
    assert ranked["rank_expected"].to_list() == pytest.approx([1.5, 2.0, 4 / 3, 13.0])  # (n + r + 1) / (r + 1) past `above`
    values = recalls(stats)
    assert values["t2i_r1"] == pytest.approx(25.0)  # (0.5 + 0) / 2
    assert values["t2i_r5"] == pytest.approx(100.0)
    assert values["i2t_r1"] == pytest.approx(100 * (2 / 3) / 2)  # 1 - C(1,1)/C(3,1), and a miss
    assert values["i2t_r10"] == pytest.approx(50.0)
    assert values["t2i_r1_optimistic"] == pytest.approx(50.0)
    assert values["t2i_r1_pessimistic"] == pytest.approx(0.0)
    six = [values[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
    assert values["mR"] == pytest.approx(sum(six) / 6)
