"""Pareto fronts on hand-made points: 2 and 3 objectives, ties, duplicates, NaN rows."""

import numpy as np
import pytest

from core.pareto import front_order, pareto_front


def test_two_objectives():
    points = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [5, 5], [2.5, 3]])
    # (3,4) is beaten by (2,3); (5,5) by everything; (2.5,3) by (2,3) (tie on y, worse x)
    assert pareto_front(points).tolist() == [True, True, False, True, False, False]


def test_ties_on_one_objective_keep_only_the_better_other():
    points = np.array([[1, 2], [1, 3], [0, 3]])
    assert pareto_front(points).tolist() == [True, False, True]


def test_exact_duplicates_both_stay_on_the_front():
    points = np.array([[1, 1], [1, 1], [2, 2]])
    assert pareto_front(points).tolist() == [True, True, False]


def test_three_objectives():
    points = np.array(
        [
            [0.10, 100, 50],  # best size only among the first three -> front
            [0.20, 50, 50],  # front
            [0.20, 60, 50],  # dominated by row 1
            [0.05, 200, 80],  # best WER -> front
            [0.10, 100, 40],  # dominates row 0 (equal WER and size, lower latency)
        ]
    )
    assert pareto_front(points).tolist() == [False, True, False, True, True]


def test_single_point_and_empty():
    assert pareto_front(np.array([[3.0, 4.0]])).tolist() == [True]
    assert pareto_front(np.zeros((0, 2))).tolist() == []


def test_nan_rows_are_never_on_the_front_and_never_dominate():
    points = np.array([[1, np.nan], [2, 2], [0, 0.5]])
    assert pareto_front(points).tolist() == [False, False, True]
    assert pareto_front(np.array([[np.nan, 0.0], [5.0, 5.0]])).tolist() == [False, True]


def test_front_order_sorts_by_first_objective():
    points = np.array([[4, 1], [1, 5], [9, 9], [2, 3]])
    assert front_order(points).tolist() == [1, 3, 0]


def test_rejects_one_dimensional_input():
    with pytest.raises(ValueError, match="objectives"):
        pareto_front(np.array([1.0, 2.0]))
