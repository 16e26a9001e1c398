"""The paper's analyses of a search, as plain functions over plain data (no I/O, no plots).

- Figure 2b / 3: best fitness against the number of children generated, "estimated using
  100 bootstrap samples of size 20 for each point along the x-axis": at x, the scored
  children among the first x generated are resampled (20 with replacement, 100 times) and
  the best fitness of each resample is taken; the curve is their mean, the band their
  10th to 90th percentile. Children that failed, were filtered or duplicated count in x
  (they cost a sample) but have no fitness.
- Figure 2a: the Pareto front (size against test error) of the top 20 models by fitness.

`evo report` and bench/search_quality.py both draw from these.
"""

import random
from dataclasses import dataclass

BOOTSTRAP_RESAMPLES = 100
BOOTSTRAP_SAMPLE_SIZE = 20
TOP_FOR_PARETO = 20
BAND = (0.10, 0.90)


@dataclass(frozen=True)
class CurvePoint:
    children: int  # children generated so far (x)
    mean: float  # mean over resamples of the best fitness in a resample
    low: float  # the band's lower edge (10th percentile)
    high: float  # the band's upper edge (90th percentile)


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    position = q * (len(sorted_values) - 1)
    lo = int(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def bootstrap_best_fitness(
    fitness_in_order: list[float | None],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    sample_size: int = BOOTSTRAP_SAMPLE_SIZE,
    seed: int = 0,
    every: int = 1,
) -> list[CurvePoint]:
    """The bootstrapped best-fitness curve of one search.

    `fitness_in_order`: one entry per child in the order generated, None for a child
    without a fitness. A point is made every `every` children (and at the last) once
    some child has a fitness.
    """
    return bootstrap_runs(
        [fitness_in_order], resamples=resamples, sample_size=sample_size, seed=seed, every=every
    )


def bootstrap_runs(
    runs: list[list[float | None]],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    sample_size: int = BOOTSTRAP_SAMPLE_SIZE,
    seed: int = 0,
    every: int = 1,
) -> list[CurvePoint]:
    """The same over several searches of one method (seeds): at x, the resamples draw
    from the scored children among the first x of every search."""
    rng = random.Random(seed)
    pool: list[float] = []
    out: list[CurvePoint] = []
    n = max((len(r) for r in runs), default=0)
    for x in range(1, n + 1):
        pool.extend(f for r in runs if x <= len(r) and (f := r[x - 1]) is not None)
        if not pool or (x % every and x != n):
            continue
        bests = sorted(max(rng.choice(pool) for _ in range(sample_size)) for _ in range(resamples))
        out.append(
            CurvePoint(
                x, sum(bests) / len(bests), _quantile(bests, BAND[0]), _quantile(bests, BAND[1])
            )
        )
    return out


@dataclass(frozen=True)
class Point:
    """A scored model as the Pareto figure sees it."""

    id: int
    fitness: float
    num_params: int
    error: float


def pareto_front(points: list[Point]) -> list[Point]:
    """The points no other beats on both size and error (ties: the earlier id), by size."""
    front: list[Point] = []
    for p in sorted(points, key=lambda p: (p.num_params, p.error, p.id)):
        if not front or p.error < front[-1].error:
            front.append(p)
    return front


def top_pareto_front(points: list[Point], top: int = TOP_FOR_PARETO) -> list[Point]:
    """Figure 2a: the Pareto front of the `top` models by fitness."""
    best = sorted(points, key=lambda p: (-p.fitness, p.id))[:top]
    return pareto_front(best)
