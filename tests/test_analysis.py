"""The paper's analyses (controller/analysis.py) on hand-made data."""

import pytest

from controller import analysis
from controller.analysis import Point


def test_the_bootstrapped_curve_starts_at_the_first_scored_child() -> None:
    curve = analysis.bootstrap_best_fitness([None, None, -50.0, None, -10.0])
    assert [p.children for p in curve] == [3, 4, 5]  # failures count in x
    first = curve[0]
    assert first.mean == first.low == first.high == -50.0  # one model: every resample's best


def test_the_band_holds_the_mean_and_a_better_child_lifts_the_curve() -> None:
    fitness: list[float | None] = [float(-100 - i) for i in range(40)]
    curve = analysis.bootstrap_best_fitness([*fitness, -5.0])
    for p in curve:
        assert -139.0 <= p.low <= p.high <= -5.0 and -139.0 <= p.mean <= -5.0
    before, after = curve[-2], curve[-1]
    assert after.high == -5.0 and after.mean > before.mean
    # 20 draws from 41: the best of a resample is the new child with probability 1-(40/41)^20.
    assert after.mean == pytest.approx(-5.0 * 0.39 + -101.5 * 0.61, rel=0.25)


def test_the_curve_is_reproducible_and_can_be_thinned() -> None:
    data: list[float | None] = [None if i % 3 else float(-i) for i in range(100)]
    assert analysis.bootstrap_best_fitness(data, seed=4) == analysis.bootstrap_best_fitness(
        data, seed=4
    )
    thin = analysis.bootstrap_best_fitness(data, every=10)
    assert [p.children for p in thin] == [*range(10, 101, 10)]
    assert analysis.bootstrap_best_fitness([None, None]) == []


def test_the_pareto_front_of_the_top_20() -> None:
    # Twenty small accurate models and one huge, most accurate one of poor fitness.
    points = [Point(i, -(1000 + 10 * i) * 0.1, 1000 + 10 * i, 0.1 - 0.001 * i) for i in range(20)]
    huge = Point(99, -1e9, 10**7, 0.01)
    front = analysis.top_pareto_front([*points, huge])
    assert huge not in front  # not in the top 20 by fitness
    assert front == sorted(points, key=lambda p: p.num_params)  # each smaller or better
    dominated = Point(50, -50.0, 2000, 0.2)
    assert dominated not in analysis.pareto_front([*points, dominated])


def test_several_searches_pool_their_first_x_children() -> None:
    a: list[float | None] = [-10.0, None, -1.0]
    b: list[float | None] = [None, -5.0]
    curve = analysis.bootstrap_runs([a, b])
    assert [p.children for p in curve] == [1, 2, 3]
    assert curve[0].mean == -10.0  # x=1: only a's first child
    assert curve[1].high == -5.0  # x=2: b's second child joins
    assert curve[2].high == -1.0
