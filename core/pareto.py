"""Pareto fronts over measured points: which compressed models are not beaten on every objective at once.

All objectives are minimized (WER, size, latency). A point is dominated when another point is no worse
on every objective and strictly better on at least one; exact duplicates do not dominate each other, so
both copies stay on the front. Rows containing NaN never dominate and are never on the front.
"""

from __future__ import annotations

import numpy as np


def pareto_front(points: np.ndarray) -> np.ndarray:
    """Boolean mask over the rows of an (n, k) array: True where no other row dominates it (minimize all)."""
    points = np.asarray(points, dtype=float)
    if points.ndim != 2:
        raise ValueError(f"expected an (n points, k objectives) array, got shape {points.shape}")
    finite = ~np.isnan(points).any(axis=1)
    on_front = finite.copy()
    valid = points[finite]
    for i in np.flatnonzero(finite):
        no_worse = (valid <= points[i]).all(axis=1)
        better = (valid < points[i]).any(axis=1)
        on_front[i] = not (no_worse & better).any()
    return on_front


def front_order(points: np.ndarray) -> np.ndarray:
    """Indices of the front's rows sorted by the first objective, then the second: a step line to draw."""
    points = np.asarray(points, dtype=float)
    index = np.flatnonzero(pareto_front(points))
    keys = [points[index, j] for j in reversed(range(points.shape[1]))]
    return index[np.lexsort(keys)] if len(index) else index
