"""Aggregate statistics over independent runs, after rliable (Agarwal et al., 2021).

*Deep Reinforcement Learning at the Edge of the Statistical Precipice* recommends reporting
the interquartile mean (IQM) of the scores of all runs on all tasks with a *stratified*
bootstrap confidence interval: each task's runs are resampled with replacement on their
own, so every task keeps its number of runs in every bootstrap replicate, and the aggregate
is then computed over the resampled scores of all tasks. This module implements that with
numpy only.

Scores
    A :data:`Scores` value holds the runs of each task. It may be

    * a 2-D array ``[num_runs, num_tasks]`` (rliable's convention: column ``j`` holds the
      runs of task ``j``),
    * a mapping ``{task: 1-D array of runs}`` or a sequence of 1-D arrays: tasks may then
      have different numbers of runs,
    * a 1-D array: one task.

Statistics
    An aggregate statistic (:func:`aggregate_iqm`, :func:`aggregate_mean`,
    :func:`aggregate_median`, :func:`optimality_gap`) takes the list of per-task arrays.
    It is *vectorised*: every array may carry leading batch dimensions, ``[..., runs_t]``,
    and the result has shape ``[...]``. The bootstrap calls it once on ``[reps, runs_t]``
    arrays, which makes 2000 replicates cost about as much as a few plain calls.

Everything is deterministic given a seed: pass ``rng`` as an ``int`` or a
``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Interval",
    "Scores",
    "Statistic",
    "aggregate_iqm",
    "aggregate_mean",
    "aggregate_median",
    "as_tasks",
    "iqm",
    "optimality_gap",
    "probability_of_improvement",
    "probability_of_improvement_ci",
    "stratified_bootstrap",
    "stratified_bootstrap_ci",
]

Scores = ArrayLike | Mapping[object, ArrayLike] | Sequence[ArrayLike]
"""Runs per task: ``[runs, tasks]`` array, ``{task: runs}`` mapping, or list of run arrays."""

Statistic = Callable[[list[np.ndarray]], "np.ndarray | float"]
"""A vectorised aggregate: per-task arrays ``[..., runs_t]`` in, result ``[...]`` out."""

RngLike = np.random.Generator | int | None


class Interval(NamedTuple):
    """A point estimate with a confidence interval ``[low, high]``."""

    point: float
    low: float
    high: float


# --------------------------------------------------------------------------- point statistics


def iqm(x: ArrayLike, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the scores left after trimming 25% from each end.

    Same semantics as ``scipy.stats.trim_mean(x, 0.25, axis)``, which rliable uses: with
    ``n`` scores, ``int(0.25 * n)`` of the smallest and as many of the largest are dropped
    (whole scores, no fractional weights) and the rest are averaged. So ``n = 8`` averages
    the middle 4, ``n = 5`` the middle 3, ``n = 10`` the middle 6, and ``n < 4`` trims
    nothing (the plain mean).

    Args:
        x: scores.
        axis: the axis to trim along; ``None`` (the default, as in rliable) flattens.

    Returns:
        A float for ``axis=None``, else an array without ``axis``.

    Raises:
        ValueError: if there are no scores along ``axis``.
    """
    a = np.asarray(x, dtype=np.float64)
    if axis is None:
        a = a.reshape(-1)
        axis = 0
    n = a.shape[axis]
    if n == 0:
        raise ValueError("iqm of an empty array")
    cut = int(0.25 * n)
    kept = np.take(np.sort(a, axis=axis), np.arange(cut, n - cut), axis=axis)
    out = np.mean(kept, axis=axis)
    return float(out) if np.ndim(out) == 0 else out


def as_tasks(scores: Scores) -> list[np.ndarray]:
    """Normalise :data:`Scores` to a list of float arrays, one per task (runs on the last axis).

    A 2-D array is read as rliable's ``[num_runs, num_tasks]``; a mapping keeps its order.

    Raises:
        ValueError: if there is no task or a task has no run.
    """
    if isinstance(scores, Mapping):
        tasks = [np.asarray(v, dtype=np.float64) for v in scores.values()]
    elif isinstance(scores, np.ndarray):
        a = scores.astype(np.float64)
        if a.ndim == 1:
            tasks = [a]
        elif a.ndim == 2:
            tasks = [a[:, j] for j in range(a.shape[1])]
        else:
            raise ValueError(f"scores must be 1-D or 2-D [runs, tasks], got shape {a.shape}")
    else:
        seq = list(scores)  # type: ignore[arg-type]
        if seq and all(np.ndim(v) == 0 for v in seq):
            tasks = [np.asarray(seq, dtype=np.float64)]
        else:
            tasks = [np.asarray(v, dtype=np.float64) for v in seq]
    if not tasks:
        raise ValueError("scores have no task")
    for t in tasks:
        if t.ndim != 1 or t.size == 0:
            raise ValueError("every task needs a 1-D array with at least one run")
    return tasks


def _scalar(x: np.ndarray | float) -> np.ndarray | float:
    return float(x) if np.ndim(x) == 0 else x


def aggregate_iqm(tasks: Sequence[np.ndarray]) -> np.ndarray | float:
    """IQM of all runs of all tasks pooled (rliable's ``aggregate_iqm``); vectorised."""
    return iqm(np.concatenate(list(tasks), axis=-1), axis=-1)


def aggregate_mean(tasks: Sequence[np.ndarray]) -> np.ndarray | float:
    """Mean over tasks of the per-task mean over runs (rliable's ``aggregate_mean``)."""
    return _scalar(np.mean(np.stack([t.mean(axis=-1) for t in tasks], axis=-1), axis=-1))


def aggregate_median(tasks: Sequence[np.ndarray]) -> np.ndarray | float:
    """Median over tasks of the per-task mean over runs (rliable's ``aggregate_median``)."""
    return _scalar(np.median(np.stack([t.mean(axis=-1) for t in tasks], axis=-1), axis=-1))


def optimality_gap(threshold: float = 1.0) -> Statistic:
    """Build the optimality-gap statistic: how far the scores fall short of ``threshold``.

    ``threshold - mean(min(score, threshold))`` over all runs of all tasks pooled, as
    rliable's ``aggregate_optimality_gap`` (whose ``gamma`` is 1 for normalised scores).
    Lower is better.
    """
    gamma = float(threshold)

    def gap(tasks: Sequence[np.ndarray]) -> np.ndarray | float:
        pooled = np.concatenate(list(tasks), axis=-1)
        return _scalar(gamma - np.mean(np.minimum(pooled, gamma), axis=-1))

    gap.__name__ = f"optimality_gap({gamma:g})"
    return gap


_NAMED: dict[str, Statistic] = {
    "iqm": aggregate_iqm,
    "mean": aggregate_mean,
    "median": aggregate_median,
}


def _statistic(statistic: Statistic | str) -> Statistic:
    if isinstance(statistic, str):
        try:
            return _NAMED[statistic]
        except KeyError:
            raise ValueError(
                f"unknown statistic {statistic!r}; use one of {sorted(_NAMED)} or a callable"
            ) from None
    return statistic


# ------------------------------------------------------------------------------ bootstrap


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _resample(tasks: list[np.ndarray], reps: int, gen: np.random.Generator) -> list[np.ndarray]:
    """Per task, ``reps`` resamples of its runs with replacement: arrays ``[reps, runs_t]``."""
    return [t[gen.integers(0, t.size, size=(reps, t.size))] for t in tasks]


def stratified_bootstrap(
    scores: Scores,
    statistic: Statistic | str = "iqm",
    reps: int = 2000,
    rng: RngLike = None,
    *,
    vectorized: bool = True,
) -> np.ndarray:
    """Bootstrap distribution of ``statistic`` with runs resampled independently per task.

    Each replicate draws, for every task, as many runs as the task has, with replacement
    from that task's runs only (rliable's ``StratifiedBootstrap``), then applies
    ``statistic`` to the per-task resamples. A task with one run contributes that same value
    to every replicate.

    Args:
        scores: runs per task (see :data:`Scores`).
        statistic: ``"iqm"``, ``"mean"``, ``"median"`` or a callable taking the per-task
            arrays.
        reps: number of bootstrap replicates.
        rng: seed or generator; the same seed gives the same replicates.
        vectorized: ``True`` when ``statistic`` accepts ``[reps, runs_t]`` arrays and
            returns ``[reps]`` (all statistics here do); ``False`` calls it once per
            replicate with 1-D arrays.

    Returns:
        The ``[reps]`` array of replicate values.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    tasks = as_tasks(scores)
    stat = _statistic(statistic)
    samples = _resample(tasks, reps, _rng(rng))
    if vectorized:
        out = np.asarray(stat(samples), dtype=np.float64).reshape(-1)
        if out.shape != (reps,):
            raise ValueError(
                "a vectorized statistic must map [reps, runs] arrays to [reps] values; "
                f"got shape {out.shape}"
            )
        return out
    return np.array([float(stat([s[r] for s in samples])) for r in range(reps)])


def _percentile_interval(point: float, boot: np.ndarray, alpha: float) -> Interval:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    low, high = np.percentile(boot, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return Interval(float(point), float(low), float(high))


def stratified_bootstrap_ci(
    scores: Scores,
    statistic: Statistic | str = "iqm",
    reps: int = 2000,
    alpha: float = 0.05,
    rng: RngLike = None,
    *,
    vectorized: bool = True,
) -> Interval:
    """Point estimate and percentile confidence interval from a stratified bootstrap.

    The point estimate is ``statistic`` on the original scores; the interval holds the
    ``alpha / 2`` and ``1 - alpha / 2`` percentiles of :func:`stratified_bootstrap`'s
    replicates (rliable's default percentile method). ``alpha=0.05`` gives a 95% interval.
    When every task has a single run, the interval collapses onto the point.

    Example:
        >>> stratified_bootstrap_ci({"spread": [1.0, 2.0, 3.0], "tag": [4.0, 5.0]}, "iqm",
        ...                         reps=500, rng=0).point
        3.0
    """
    tasks = as_tasks(scores)
    stat = _statistic(statistic)
    point = float(stat(tasks))
    boot = stratified_bootstrap(tasks, stat, reps, rng, vectorized=vectorized)
    return _percentile_interval(point, boot, alpha)


# -------------------------------------------------------------- probability of improvement


def probability_of_improvement(x: Sequence[np.ndarray], y: Sequence[np.ndarray]) -> np.ndarray:
    """P(X > Y): the chance a run of X beats a run of Y on the same task, averaged over tasks.

    Per task it is the Mann-Whitney U statistic over the pairs of runs, ties counting a
    half: ``mean(x_i > y_j) + 0.5 * mean(x_i == y_j)`` (rliable's
    ``probability_of_improvement``). Vectorised like the aggregates: ``x[t]`` is
    ``[..., n_t]`` and ``y[t]`` is ``[..., m_t]`` with the same leading dimensions.
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} tasks but y has {len(y)}")
    per_task = []
    for xt, yt in zip(x, y, strict=True):
        a = np.asarray(xt, dtype=np.float64)[..., :, None]
        b = np.asarray(yt, dtype=np.float64)[..., None, :]
        per_task.append(np.mean(a > b, axis=(-2, -1)) + 0.5 * np.mean(a == b, axis=(-2, -1)))
    return np.mean(np.stack(per_task, axis=-1), axis=-1)


def probability_of_improvement_ci(
    x: Scores,
    y: Scores,
    reps: int = 2000,
    alpha: float = 0.05,
    rng: RngLike = None,
) -> Interval:
    """:func:`probability_of_improvement` of X over Y with a stratified bootstrap interval.

    The runs of X and of Y are resampled independently, each task on its own (rliable's
    ``StratifiedIndependentBootstrap``). X and Y must list the same tasks in the same order.
    """
    xs, ys = as_tasks(x), as_tasks(y)
    if len(xs) != len(ys):
        raise ValueError(f"x has {len(xs)} tasks but y has {len(ys)}")
    gen = _rng(rng)
    point = float(probability_of_improvement(xs, ys))
    boot = probability_of_improvement(_resample(xs, reps, gen), _resample(ys, reps, gen))
    return _percentile_interval(point, np.asarray(boot).reshape(-1), alpha)
