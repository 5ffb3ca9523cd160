"""Re-ranking each image's neighbours by pair confidence (dedup.rerank): the
order on a hand-computed case; on real photos, see
tests/test_grouping.py::test_neighbours_reranked_by_confidence."""

from __future__ import annotations

import numpy as np
import pytest

from dedup.evaluate import recall_at_1
from dedup.rerank import ranked_neighbours

# four images; each fused kNN list starts with the image itself
FUSED = np.array([[0, 3, 1], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
IJ = np.array([[0, 1], [0, 2], [1, 3], [2, 3]])
P = np.array([0.2, 0.9, 0.9, 0.9])
# rank of j in i's list and of i in j's (self not counted; 3 = absent)
RANK_IJ = np.array([1, 3, 1, 0])
RANK_JI = np.array([0, 1, 1, 0])


def test_candidates_by_confidence_then_rank_then_the_rest_of_the_knn_list():
    got = ranked_neighbours(IJ, P, RANK_IJ, RANK_JI, FUSED)
    expected = np.array(
        [
            [2, 1, 3],  # 2 (0.9) before 1 (0.2), though 1 is nearer; 3 has no scored pair: last
            [3, 0, -1],  # 3 (0.9) before 0 (0.2)
            [3, 0, -1],  # a tie at 0.9: the nearer in the kNN list (3, rank 0) first
            [2, 1, -1],  # a tie at 0.9: 2 (rank 0) before 1 (rank 1)
        ]
    )
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(ranked_neighbours(IJ, P, RANK_IJ, RANK_JI, FUSED, k=1), expected[:, :1])
    wide = ranked_neighbours(IJ, P, RANK_IJ, RANK_JI, FUSED, k=5)
    assert wide.shape == (4, 5) and (wide[:, 3:] == -1).all()
    # recall@1 reads the first column (the image itself is never listed)
    truth = np.array(["a", "b", "a", "b"])
    assert recall_at_1(got, truth) == 0.5
    assert recall_at_1(FUSED, truth) == 0.0


def test_no_pairs_keeps_the_knn_order():
    none = np.zeros(0, np.int64)
    got = ranked_neighbours(np.zeros((0, 2), np.int64), np.zeros(0), none, none, FUSED)
    np.testing.assert_array_equal(got, [[3, 1, -1], [0, 3, -1], [3, 0, -1], [2, 1, -1]])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="confidences"):
        ranked_neighbours(IJ, P[:3], RANK_IJ, RANK_JI, FUSED)
    with pytest.raises(ValueError, match="outside"):
        ranked_neighbours(IJ + 1, P, RANK_IJ, RANK_JI, FUSED)
