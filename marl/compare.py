"""Compare training runs: aggregate scores with stratified bootstrap CIs, curves and tables.

A run directory ``runs/<experiment>/<run-id>/`` holds ``config.yaml`` (the resolved
config), ``metrics.jsonl`` (training metrics per update and seed), ``eval.jsonl`` (one line
per evaluation and seed) and, once training ends, ``final.json`` (the *absolute* metric:
the best parameters re-evaluated with ten times the episodes, and the *final* one: the last
evaluation).

:func:`compare` follows rliable (Agarwal et al., 2021) and the MARL evaluation protocol of
Gorsane et al. (2022):

* runs are grouped by algorithm (``algo.name``); the environments (``env.name``) are the
  tasks, so one algorithm trained on two environments is one group with two tasks;
* every seed of every run is one independent run score;
* the score of a seed is its absolute metric when *every* run has one, else its last
  evaluation;
* with more than one task, scores are min-max normalised per task over all runs of all
  algorithms (as marl-eval does), so that tasks on different scales can be pooled;
* each algorithm gets its IQM, mean and median with 95% stratified bootstrap CIs, and each
  pair of algorithms sharing their tasks the probability of improvement;
* sample-efficiency curves: the IQM with its CI of the metric at each evaluation step.

It writes ``compare.png``, ``compare.json``, ``compare.md`` and ``marl_eval.json`` (the
runs in marl-eval's raw format, see :func:`to_marl_eval_json`).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from marl import stats
from marl.errors import ConfigError, MarlError

__all__ = [
    "AggregateRow",
    "CompareResult",
    "Curve",
    "RunData",
    "cli",
    "compare",
    "expand_run_dirs",
    "load_run",
    "merge_marl_eval",
    "render_table",
    "to_marl_eval_json",
    "write_marl_eval_json",
]

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
FINAL_FILE = "final.json"
DEFAULT_METRIC = "eval/episode_return"
MAX_CURVE_POINTS = 250
"""Sample-efficiency curves keep at most this many evaluation steps (evenly spaced)."""


# ---------------------------------------------------------------------------------- loading


@dataclass
class RunData:
    """The contents of one run directory.

    Attributes:
        path: the run directory.
        config: the resolved config as plain Python containers.
        experiment, algo, env: ``experiment``, ``algo.name`` and ``env.name`` of the config.
        seed: the base seed; ``num_seeds`` seeds (indices ``0 .. num_seeds-1``) were trained.
        metrics: the rows of ``metrics.jsonl`` (empty when the file is missing).
        evals: the rows of ``eval.jsonl`` (empty when the file is missing).
        final: ``final.json`` (``None`` when missing); may lack ``absolute`` or ``final``.
        warnings: what was tolerated while reading (a truncated last line, ...).
    """

    path: Path
    config: dict[str, Any]
    experiment: str
    algo: str
    env: str
    seed: int
    num_seeds: int
    metrics: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """``<experiment>/<run-id>``, for messages and tables."""
        return f"{self.path.parent.name}/{self.path.name}"

    def _rows_for(self, metric: str) -> tuple[list[dict[str, Any]], str]:
        """The rows that log ``metric``: eval rows first, else training rows."""
        if any(_number(r.get(metric)) is not None for r in self.evals):
            return self.evals, EVAL_FILE
        if any(_number(r.get(metric)) is not None for r in self.metrics):
            return self.metrics, METRICS_FILE
        return [], ""

    def series(self, metric: str) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """Per seed index, ``(env_steps, values)`` of ``metric`` sorted by step, nulls dropped.

        Read from ``eval.jsonl`` when it logs ``metric``, else from ``metrics.jsonl``. When
        a step was logged twice (a resumed run), the later line wins.
        """
        rows, _ = self._rows_for(metric)
        by_seed: dict[int, dict[int, float]] = {}
        for r in rows:
            v = _number(r.get(metric))
            if v is None or "seed" not in r:
                continue
            step = r.get("env_steps", r.get("update"))
            if step is None:
                continue
            by_seed.setdefault(int(r["seed"]), {})[int(step)] = v
        out = {}
        for s, pts in sorted(by_seed.items()):
            steps = np.array(sorted(pts), dtype=np.int64)
            out[s] = (steps, np.array([pts[k] for k in steps.tolist()], dtype=np.float64))
        return out

    def absolute(self, metric: str) -> dict[int, float] | None:
        """Per seed index, the absolute metric of ``final.json``; ``None`` if any is missing."""
        return self._final_entries("absolute", metric)

    def final_eval(self, metric: str) -> dict[int, float] | None:
        """Per seed index, the ``final`` entry of ``final.json``; ``None`` if any is missing."""
        return self._final_entries("final", metric)

    def _final_entries(self, key: str, metric: str) -> dict[int, float] | None:
        entries = (self.final or {}).get(key)
        if not isinstance(entries, list) or not entries:
            return None
        out: dict[int, float] = {}
        for e in entries:
            v = _number(e.get(metric)) if isinstance(e, dict) else None
            if v is None or "seed" not in e:
                return None
            out[int(e["seed"])] = v
        return out

    def last_values(self, metric: str) -> dict[int, float]:
        """Per seed index, the value of ``metric`` at its last logged step.

        Falls back to the ``final`` entries of ``final.json`` for seeds without rows.
        """
        out = {s: float(v[-1]) for s, (_, v) in self.series(metric).items()}
        for s, v in (self.final_eval(metric) or {}).items():
            out.setdefault(s, v)
        return dict(sorted(out.items()))


def _number(v: Any) -> float | None:
    """``v`` as a finite float, or ``None`` for null, NaN, infinities and non-numbers."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _read_jsonl(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """Rows of a JSON-lines file; a truncated last line (a run still writing) is skipped."""
    lines = path.read_bytes().decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    rows: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if i == last:
                warnings.append(f"{path}: skipped the truncated last line {i + 1}")
                break
            raise MarlError(f"{path}: line {i + 1} is not a JSON object: {line.strip()[:80]!r}")
        rows.append(row)
    return rows


def _config_name(cfg: Mapping[str, Any], key: str, file: Path) -> str:
    node = cfg.get(key)
    if isinstance(node, Mapping):
        node = node.get("name")
    if not isinstance(node, str) or not node:
        raise ConfigError(f"{file} has no {key}.name")
    return node


def load_run(run_dir: str | Path) -> RunData:
    """Read a run directory.

    ``config.yaml`` is required, and at least one of ``metrics.jsonl``, ``eval.jsonl`` and
    ``final.json``. A truncated last line of a JSON-lines file is skipped (and noted in
    :attr:`RunData.warnings`), so a run still training can be compared; an unreadable
    ``final.json`` counts as missing, with a warning.

    Raises:
        MarlError: naming the missing or corrupt file when ``run_dir`` is not a readable run.
    """
    import yaml

    path = Path(run_dir)
    if not path.exists():
        raise MarlError(f"run directory not found: {path}")
    if not path.is_dir():
        raise MarlError(f"{path} is not a run directory (it is a file)")
    cfg_file = path / CONFIG_FILE
    if not cfg_file.is_file():
        raise MarlError(f"{path} is not a run directory: {CONFIG_FILE} is missing")
    try:
        cfg = yaml.safe_load(cfg_file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise MarlError(f"cannot read {cfg_file}: {err}") from None
    if not isinstance(cfg, dict):
        raise MarlError(f"{cfg_file} is not a YAML mapping")
    files = [path / f for f in (METRICS_FILE, EVAL_FILE, FINAL_FILE)]
    if not any(f.is_file() for f in files):
        raise MarlError(
            f"{path} has no results: {METRICS_FILE}, {EVAL_FILE} and {FINAL_FILE} are missing"
        )
    warnings: list[str] = []
    metrics = _read_jsonl(files[0], warnings) if files[0].is_file() else []
    evals = _read_jsonl(files[1], warnings) if files[1].is_file() else []
    final = None
    if files[2].is_file():
        try:
            final = json.loads(files[2].read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            warnings.append(f"{files[2]}: ignored, not valid JSON ({err})")
        if final is not None and not isinstance(final, dict):
            warnings.append(f"{files[2]}: ignored, not a JSON object")
            final = None
    seeds = {int(r["seed"]) for r in (*metrics, *evals) if isinstance(r.get("seed"), int)}
    try:
        seed = int(cfg.get("seed", 0) or 0)
        num_seeds = int(cfg.get("num_seeds") or (max(seeds) + 1 if seeds else 1))
    except (TypeError, ValueError):
        raise ConfigError(f"{cfg_file}: seed and num_seeds must be integers") from None
    return RunData(
        path=path,
        config=cfg,
        experiment=str(cfg.get("experiment") or path.parent.name),
        algo=_config_name(cfg, "algo", cfg_file),
        env=_config_name(cfg, "env", cfg_file),
        seed=seed,
        num_seeds=num_seeds,
        metrics=metrics,
        evals=evals,
        final=final,
        warnings=warnings,
    )


def expand_run_dirs(run_dirs: Iterable[str | Path]) -> list[Path]:
    """Run directories named by ``run_dirs``: a run directory, or a folder of run directories.

    ``runs/<experiment>`` stands for all its runs. Duplicates are dropped, order is kept.

    Raises:
        MarlError: for a path that does not exist or holds no run.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for d in run_dirs:
        p = Path(d)
        if not p.exists():
            raise MarlError(f"run directory not found: {p}")
        if (p / CONFIG_FILE).is_file() or not p.is_dir():
            found = [p]
        else:
            found = sorted(c for c in p.iterdir() if (c / CONFIG_FILE).is_file())
            if not found:
                raise MarlError(f"{p} is not a run directory: {CONFIG_FILE} is missing")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                out.append(f)
    if not out:
        raise MarlError("no run directories to compare")
    return out


def _sweep_jobs(
    run_dirs: Iterable[str | Path],
) -> tuple[list[Path], dict[Path, str], list[str]]:
    """Sweep directories (``marl train -m``) replaced by their finished jobs, each labelled
    with its swept values (the seed and the environment excepted); failed jobs are left out
    with a note."""
    from marl.sweep import is_sweep, read_index

    out: list[Path] = []
    labels: dict[Path, str] = {}
    notes: list[str] = []
    for d in run_dirs:
        d = Path(d)
        if not is_sweep(d):
            out.append(d)
            continue
        rows = read_index(d)
        for row in rows:
            job_dir = d / Path(row["run_dir"]).name
            if row.get("status") == "ok":
                out.append(job_dir)
                labels[job_dir.resolve()] = row.get("label") or "all"
            else:
                notes.append(
                    f"{d.name}: job {row['job']} ({' '.join(row['overrides'])}) left out: "
                    f"{row.get('status')}, {row.get('error', 'no result')}"
                )
        if not any(r.get("status") == "ok" for r in rows):
            raise MarlError(f"sweep {d} has no finished job to compare")
    return out, labels, notes


# ---------------------------------------------------------------------------------- results


@dataclass
class AggregateRow:
    """One algorithm's aggregate scores (point estimate and 95% CI each)."""

    algorithm: str
    tasks: list[str]
    num_runs: int
    iqm: stats.Interval
    mean: stats.Interval
    median: stats.Interval
    optimality_gap: stats.Interval | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "algorithm": self.algorithm,
            "tasks": self.tasks,
            "num_runs": self.num_runs,
        }
        for key in ("iqm", "mean", "median", "optimality_gap"):
            iv = getattr(self, key)
            d[key] = None if iv is None else _interval_dict(iv)
        return d


@dataclass
class Curve:
    """A sample-efficiency curve: the IQM and its CI at each environment step."""

    algorithm: str
    steps: list[int]
    iqm: list[float]
    low: list[float]
    high: list[float]
    interpolated: bool
    num_runs: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "iqm": self.iqm,
            "low": self.low,
            "high": self.high,
            "interpolated": self.interpolated,
            "num_runs": self.num_runs,
        }


@dataclass
class CompareResult:
    """Everything :func:`compare` computed; ``rows`` is the table, best IQM first."""

    metric: str
    source: str
    normalized: bool
    reps: int
    alpha: float
    seed: int
    rows: list[AggregateRow]
    per_task: dict[str, dict[str, dict[str, Any]]]
    curves: dict[str, Curve]
    improvement: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    notes: list[str]
    normalization: dict[str, dict[str, float]] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """All numbers, JSON-ready (this is ``compare.json``)."""
        return {
            "metric": self.metric,
            "source": self.source,
            "normalized": self.normalized,
            "normalization": self.normalization,
            "confidence": 1.0 - self.alpha,
            "bootstrap_reps": self.reps,
            "seed": self.seed,
            "aggregate": [r.to_dict() for r in self.rows],
            "per_task": self.per_task,
            "probability_of_improvement": self.improvement,
            "curves": {k: c.to_dict() for k, c in self.curves.items()},
            "runs": self.runs,
            "notes": self.notes,
        }


def _interval_dict(iv: stats.Interval) -> dict[str, float]:
    return {"point": iv.point, "low": iv.low, "high": iv.high}


# ------------------------------------------------------------------------------- computing

_SOURCE_TEXT = {
    "absolute": "absolute metric (best parameters re-evaluated, final.json)",
    "final": "last evaluation of each seed",
    "train": "last logged training value of each seed",
}


def _default_out_dir() -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / "runs" / "compare" / stamp


def _child_rng(seed: int, *key: int) -> np.random.Generator:
    """A generator per (purpose, index): one result does not shift another's draws."""
    return np.random.default_rng([seed, *key])


def _scores_of(runs: list[RunData], metric: str) -> tuple[list[dict[int, float]], str]:
    """Per run, per seed index, the score; and the source used."""
    absolute = [r.absolute(metric) for r in runs]
    if all(absolute):
        return [a or {} for a in absolute], "absolute"
    out: list[dict[int, float]] = []
    from_train = False
    for r in runs:
        vals = r.last_values(metric)
        if not vals:
            missing = [f for f in (EVAL_FILE, FINAL_FILE) if not (r.path / f).is_file()]
            why = f" ({' and '.join(missing)} missing)" if missing else ""
            raise MarlError(f"run {r.path} has no values of {metric!r}{why}")
        from_train |= r._rows_for(metric)[1] == METRICS_FILE
        out.append(vals)
    return out, "train" if from_train else "final"


def _curve_grid(series: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, bool] | None:
    """Common steps of the series: the steps all have, else an interpolation grid.

    When the series share their steps (or at least half the shortest one's steps, as when a
    run stopped early), the steps present in all of them are used. Otherwise the values are
    interpolated linearly onto an evenly spaced grid over the steps that all series cover.
    ``None`` when the series do not overlap.
    """
    common = set(series[0][0].tolist())
    for steps, _ in series[1:]:
        common &= set(steps.tolist())
    shortest = min(len(s) for s, _ in series)
    if common and len(common) * 2 >= shortest:
        grid, interp = np.array(sorted(common), dtype=np.float64), False
    else:
        lo = max(float(s[0]) for s, _ in series)
        hi = min(float(s[-1]) for s, _ in series)
        if hi < lo:
            return None
        n = max(2, int(np.median([len(s) for s, _ in series]))) if hi > lo else 1
        grid, interp = np.linspace(lo, hi, n), True
    if grid.size > MAX_CURVE_POINTS:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, MAX_CURVE_POINTS).round().astype(int))]
    return grid, interp


def compare(
    run_dirs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    metric: str = DEFAULT_METRIC,
    reps: int = 2000,
    seed: int = 0,
    *,
    alpha: float = 0.05,
    normalize: bool | None = None,
    optimality_threshold: float | None = None,
    group_by: str = "algo",
    write: bool = True,
) -> CompareResult:
    """Compare runs: aggregate IQM/mean/median with stratified bootstrap CIs, and curves.

    Args:
        run_dirs: run directories, or folders of run directories (``runs/<experiment>``).
        out_dir: where to write ``compare.{png,json,md}`` and ``marl_eval.json``; ``None``
            means ``./runs/compare/<timestamp>/``.
        metric: the metric to compare, e.g. ``eval/episode_return`` or ``eval/win_rate``
            (a ``train/...`` metric is read from ``metrics.jsonl``).
        reps: bootstrap replicates.
        seed: seed of the bootstrap; the same seed gives the same numbers.
        alpha: ``1 - confidence`` of the intervals (0.05: 95% CIs).
        normalize: min-max normalise the scores per task over all runs; ``None`` does it
            when there is more than one task.
        optimality_threshold: also report the optimality gap to this score (after
            normalisation when it applies: 1.0 is then the best run seen).
        group_by: ``"algo"`` (one group per ``algo.name``, the environments being its
            tasks) or ``"experiment"`` (one group per ``experiment`` name, e.g. to compare
            hyperparameter settings of one algorithm).
        write: ``False`` computes without writing files.

    Returns:
        The :class:`CompareResult`; its ``rows`` are the table, best IQM first.

    Raises:
        MarlError: for a path that is not a run, a run without values of ``metric``, ...
    """
    if group_by not in ("algo", "experiment"):
        raise ConfigError(f"group_by must be 'algo' or 'experiment', got {group_by!r}")
    if reps < 1:
        raise ConfigError(f"reps must be >= 1, got {reps}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"alpha must be in (0, 1), got {alpha}")
    run_dirs, labels, notes = _sweep_jobs(run_dirs)
    runs = [load_run(p) for p in expand_run_dirs(run_dirs)]
    notes += [w for r in runs for w in r.warnings]

    # Scores per group and task ---------------------------------------------------------
    run_scores, source = _scores_of(runs, metric)

    def group(r: RunData) -> str:
        label = labels.get(r.path.resolve())
        if label is not None and group_by == "algo":  # a sweep's job: its swept values
            return r.algo if label == "all" else label
        return r.algo if group_by == "algo" else r.experiment

    groups: dict[str, dict[str, list[float]]] = {}
    members: dict[tuple[str, str], set[str]] = {}
    for r, vals in zip(runs, run_scores, strict=True):
        groups.setdefault(group(r), {}).setdefault(r.env, []).extend(vals.values())
        members.setdefault((group(r), r.env), set()).add(r.experiment)
    for (g, env), exps in sorted(members.items()):
        if group_by == "algo" and len(exps) > 1:
            notes.append(
                f"{g} on {env}: pooled the seeds of experiments {', '.join(sorted(exps))} "
                "(use group_by='experiment' to keep them apart)"
            )
    all_tasks = sorted({t for tasks in groups.values() for t in tasks})
    task_sets = {g: tuple(sorted(t)) for g, t in groups.items()}
    if len(set(task_sets.values())) > 1:
        notes.append(
            "the algorithms were not run on the same tasks; each aggregate covers its own tasks"
        )

    # Curves (raw) ----------------------------------------------------------------------
    raw_series: dict[str, list[tuple[str, np.ndarray, np.ndarray]]] = {}
    for r in runs:
        for _, (steps, vals) in r.series(metric).items():
            raw_series.setdefault(group(r), []).append((r.env, steps, vals))

    # Normalisation ---------------------------------------------------------------------
    normalized = len(all_tasks) > 1 if normalize is None else bool(normalize)
    bounds: dict[str, tuple[float, float]] = {}
    if normalized:
        for t in all_tasks:
            vals = [v for g in groups.values() for v in g.get(t, [])]
            vals += [v for ss in raw_series.values() for env, _, y in ss if env == t for v in y]
            bounds[t] = (float(np.min(vals)), float(np.max(vals)))

    def norm(task: str, x: np.ndarray) -> np.ndarray:
        if not normalized:
            return x
        lo, hi = bounds[task]
        return (x - lo) / (hi - lo) if hi > lo else x - lo

    # Aggregates ------------------------------------------------------------------------
    gap = None if optimality_threshold is None else stats.optimality_gap(optimality_threshold)
    rows: list[AggregateRow] = []
    per_task: dict[str, dict[str, dict[str, Any]]] = {}
    task_arrays: dict[str, dict[str, np.ndarray]] = {}
    for gi, g in enumerate(sorted(groups)):
        arrays = {t: norm(t, np.array(v)) for t, v in sorted(groups[g].items())}
        task_arrays[g] = arrays
        per_task[g] = {
            t: {
                "num_runs": len(v),
                "mean": float(np.mean(v)),
                "iqm": float(stats.iqm(v)),
                "std": float(np.std(v)),
                "min": float(np.min(v)),
                "max": float(np.max(v)),
                "scores": [float(x) for x in v],
            }
            for t, v in sorted(groups[g].items())
        }

        def ci(
            stat: stats.Statistic | str, k: int, a: dict = arrays, i: int = gi
        ) -> stats.Interval:
            return stats.stratified_bootstrap_ci(a, stat, reps, alpha, _child_rng(seed, 0, i, k))

        rows.append(
            AggregateRow(
                algorithm=g,
                tasks=list(arrays),
                num_runs=sum(a.size for a in arrays.values()),
                iqm=ci("iqm", 0),
                mean=ci("mean", 1),
                median=ci("median", 2),
                optimality_gap=None if gap is None else ci(gap, 3),
            )
        )
    rows.sort(key=lambda r: (-r.iqm.point, r.algorithm))

    # Probability of improvement between groups on the same tasks, better IQM as X -------
    improvement = []
    index = {g: i for i, g in enumerate(sorted(groups))}
    ranked = [r.algorithm for r in rows]
    for a, x in enumerate(ranked):
        for y in ranked[a + 1 :]:
            if task_sets[x] != task_sets[y]:
                continue
            i, j = index[x], index[y]
            tasks = list(task_sets[x])
            iv = stats.probability_of_improvement_ci(
                [task_arrays[x][t] for t in tasks],
                [task_arrays[y][t] for t in tasks],
                reps,
                alpha,
                _child_rng(seed, 1, i, j),
            )
            improvement.append({"x": x, "y": y, **_interval_dict(iv)})

    # Sample-efficiency curves ----------------------------------------------------------
    curves: dict[str, Curve] = {}
    for gi, g in enumerate(sorted(raw_series)):
        series = raw_series[g]
        grid_info = _curve_grid([(s, v) for _, s, v in series])
        if grid_info is None:
            notes.append(f"{g}: the seeds' evaluation steps do not overlap; no curve")
            continue
        grid, interp = grid_info
        per_step: dict[str, list[np.ndarray]] = {}
        for env, s, v in series:
            if interp:
                y = np.interp(grid, s.astype(np.float64), v)
            else:
                y = v[np.searchsorted(s, grid.astype(np.int64))]
            per_step.setdefault(env, []).append(norm(env, y))
        mats = {t: np.stack(ys, axis=0) for t, ys in sorted(per_step.items())}  # [runs, steps]
        gen = _child_rng(seed, 2, gi)
        pts, lows, highs = [], [], []
        for k in range(grid.size):
            iv = stats.stratified_bootstrap_ci(
                {t: m[:, k] for t, m in mats.items()}, "iqm", reps, alpha, gen
            )
            pts.append(iv.point)
            lows.append(iv.low)
            highs.append(iv.high)
        if interp:
            notes.append(f"{g}: evaluation steps differ between seeds; curve interpolated")
        curves[g] = Curve(
            algorithm=g,
            steps=[int(round(x)) for x in grid],
            iqm=pts,
            low=lows,
            high=highs,
            interpolated=interp,
            num_runs=len(series),
        )

    run_info = [
        {
            "path": str(r.path),
            "experiment": r.experiment,
            "algorithm": r.algo,
            "env": r.env,
            "seed": r.seed,
            "num_seeds": r.num_seeds,
            "scores": {str(s): v for s, v in vals.items()},
        }
        for r, vals in zip(runs, run_scores, strict=True)
    ]
    result = CompareResult(
        metric=metric,
        source=source,
        normalized=normalized,
        reps=reps,
        alpha=alpha,
        seed=seed,
        rows=rows,
        per_task=per_task,
        curves=curves,
        improvement=improvement,
        runs=run_info,
        notes=notes,
        normalization={t: {"min": lo, "max": hi} for t, (lo, hi) in bounds.items()},
    )
    if write:
        out = Path(out_dir) if out_dir is not None else _default_out_dir()
        out.mkdir(parents=True, exist_ok=True)
        result.paths = {
            "png": _write_png(result, out / "compare.png"),
            "json": out / "compare.json",
            "md": out / "compare.md",
            "marl_eval": out / "marl_eval.json",
        }
        result.paths["json"].write_text(json.dumps(_jsonable(result.to_dict()), indent=2) + "\n")
        result.paths["md"].write_text(render_markdown(result))
        eval_metric = metric if metric.startswith("eval/") else DEFAULT_METRIC
        write_marl_eval_json([r.path for r in runs], result.paths["marl_eval"], metric=eval_metric)
    return result


def _jsonable(obj: Any) -> Any:
    """Replace NaN and infinities (not JSON) by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------- output


def _fmt(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else "nan"


def _ci_text(iv: stats.Interval) -> str:
    return f"[{_fmt(iv.low)}, {_fmt(iv.high)}]"


def _header(result: CompareResult) -> str:
    scale = "min-max normalised per task" if result.normalized else "raw"
    conf = round(100 * (1 - result.alpha))
    return (
        f"{result.metric}: {_SOURCE_TEXT[result.source]}; scores {scale}; "
        f"{conf}% stratified bootstrap CIs ({result.reps} reps, seed {result.seed})"
    )


def render_markdown(result: CompareResult) -> str:
    """``compare.md``: the aggregate table, the per-task scores and the runs."""
    conf = round(100 * (1 - result.alpha))
    lines = [f"# Comparison of {result.metric}", "", _header(result) + ".", ""]
    has_gap = any(r.optimality_gap is not None for r in result.rows)
    head = ["algorithm", "tasks", "runs", "IQM", f"IQM {conf}% CI", "mean", f"mean {conf}% CI"]
    head += ["median", f"median {conf}% CI"] + (["optimality gap", "gap CI"] if has_gap else [])
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result.rows:
        cells = [r.algorithm, ", ".join(r.tasks), str(r.num_runs)]
        for iv in (r.iqm, r.mean, r.median) + ((r.optimality_gap,) if has_gap else ()):
            cells += ["" if iv is None else _fmt(iv.point), "" if iv is None else _ci_text(iv)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "## Per task (raw scores)", ""]
    lines += ["| algorithm | task | runs | mean | IQM | std | min | max |", "|" + "---|" * 8]
    for g, tasks in sorted(result.per_task.items()):
        for t, d in tasks.items():
            nums = [_fmt(d[k]) for k in ("mean", "iqm", "std", "min", "max")]
            lines.append(f"| {g} | {t} | {d['num_runs']} | " + " | ".join(nums) + " |")
    if result.improvement:
        lines += ["", "## Probability of improvement", ""]
        lines += ["| X | Y | P(X > Y) | CI |", "|---|---|---|---|"]
        for p in result.improvement:
            iv = stats.Interval(p["point"], p["low"], p["high"])
            lines.append(f"| {p['x']} | {p['y']} | {_fmt(iv.point)} | {_ci_text(iv)} |")
    lines += ["", "## Runs", ""]
    for r in result.runs:
        lines.append(
            f"- `{r['path']}`: {r['algorithm']} on {r['env']}, {len(r['scores'])} seeds "
            f"(base seed {r['seed']})"
        )
    if result.notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"


def render_table(result: CompareResult) -> Any:
    """The aggregate table as a :class:`rich.table.Table`, best IQM first."""
    from rich.table import Table

    conf = round(100 * (1 - result.alpha))
    table = Table(title=f"Comparison of {result.metric}", caption=_header(result))
    for col in ("algorithm", "tasks", "runs"):
        table.add_column(col, overflow="fold")
    for col in ("IQM", f"{conf}% CI", "mean", f"{conf}% CI", "median", f"{conf}% CI"):
        table.add_column(col, justify="right")
    has_gap = any(r.optimality_gap is not None for r in result.rows)
    if has_gap:
        table.add_column("opt. gap", justify="right")
        table.add_column(f"{conf}% CI", justify="right")
    for r in result.rows:
        cells = [r.algorithm, ", ".join(r.tasks), str(r.num_runs)]
        for iv in (r.iqm, r.mean, r.median) + ((r.optimality_gap,) if has_gap else ()):
            cells += ["" if iv is None else _fmt(iv.point), "" if iv is None else _ci_text(iv)]
        table.add_row(*cells)
    return table


def _write_png(result: CompareResult, path: Path) -> Path:
    """``compare.png``: aggregate IQM intervals (left) and sample-efficiency curves (right)."""
    from matplotlib.figure import Figure  # the Agg canvas; no pyplot, no global backend

    names = sorted({r.algorithm for r in result.rows} | set(result.curves))
    colors = {n: f"C{i % 10}" for i, n in enumerate(names)}
    fig = Figure(figsize=(12, max(4.0, 1.2 + 0.5 * len(result.rows))), layout="constrained")
    ax_bar, ax_curve = fig.subplots(1, 2, width_ratios=[1, 1.6])
    scale = " (normalised)" if result.normalized else ""
    conf = round(100 * (1 - result.alpha))

    rows = result.rows[::-1]  # best at the top
    for y, r in enumerate(rows):
        c = colors[r.algorithm]
        ax_bar.barh(y, r.iqm.high - r.iqm.low, left=r.iqm.low, height=0.6, color=c, alpha=0.6)
        ax_bar.plot([r.iqm.point, r.iqm.point], [y - 0.3, y + 0.3], color="k", lw=2)
    ax_bar.set_yticks(range(len(rows)), [r.algorithm for r in rows])
    ax_bar.set_xlabel(f"IQM of {result.metric}{scale}")
    ax_bar.set_title(f"Aggregate IQM, {conf}% CI ({result.source})")
    ax_bar.grid(axis="x", alpha=0.3)

    for g, c in result.curves.items():
        ax_curve.plot(c.steps, c.iqm, color=colors[g], label=g, lw=1.8)
        ax_curve.fill_between(c.steps, c.low, c.high, color=colors[g], alpha=0.2, lw=0)
    ax_curve.set_xlabel("environment steps")
    ax_curve.set_ylabel(f"IQM of {result.metric}{scale}")
    ax_curve.set_title("Sample efficiency")
    ax_curve.grid(alpha=0.3)
    if result.curves:
        ax_curve.legend(loc="best", fontsize="small")
    else:
        ax_curve.text(0.5, 0.5, "no evaluation curves", ha="center", transform=ax_curve.transAxes)
    fig.savefig(path, dpi=110)
    return path


def cli(
    run_dirs: list[str],
    out: str | None = None,
    metric: str = DEFAULT_METRIC,
    *,
    reps: int = 2000,
    seed: int = 0,
) -> int:
    """``marl compare``: compare runs, print the table and the paths of the files written.

    Returns the exit code (0). A :class:`MarlError` propagates for the CLI to print.
    """
    from rich.console import Console

    result = compare(run_dirs, out, metric=metric, reps=reps, seed=seed)
    console = Console(width=max(140, Console().width))
    console.print(render_table(result))
    for p in result.improvement:
        console.print(
            f"P({p['x']} > {p['y']}) = {_fmt(p['point'])} "
            f"{_ci_text(stats.Interval(p['point'], p['low'], p['high']))}"
        )
    for n in result.notes:
        console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    for kind, p in result.paths.items():
        console.print(f"{kind}: {p}", highlight=False)
    return 0


# ------------------------------------------------------------------------------- marl-eval


def _env_task(env_name: str) -> tuple[str, str]:
    """``mpe/simple_spread`` -> (``mpe``, ``simple_spread``); a plain name is both."""
    for sep in ("/", ":"):
        if sep in env_name:
            env, task = env_name.split(sep, 1)
            return env, task
    return env_name, env_name


def to_marl_eval_json(
    run_dir: str | Path,
    *,
    metric: str = DEFAULT_METRIC,
    env_name: str | None = None,
    task_name: str | None = None,
    absolute_fallback: bool = False,
) -> dict[str, Any]:
    """One run in the raw JSON format of InstaDeep's marl-eval (Gorsane et al., 2022).

    Structure (marl-eval README, "Data Structure for Raw Experiment data")::

        {env_name: {task_name: {algo_name: {
            "seed_<i>": {
                "step_0": {"step_count": <env steps>, "episode_return": [<mean>],
                           "win_rate": [<rate>], "episode_length": [<mean>]},
                ...
                "step_<k>": {...},
                "absolute_metrics": {"episode_return": [<mean>], "win_rate": [<rate>]},
            }, ...}}}}

    * ``env_name`` / ``task_name`` come from ``env.name`` split at its first ``/`` (or
      ``:``): ``mpe/simple_spread`` gives ``mpe`` / ``simple_spread``; a name without one is
      used for both. ``algo_name`` is ``algo.name``.
    * ``seed_<i>`` is the seed index ``i`` of the run (``0 .. num_seeds-1``).
    * ``step_<k>`` numbers the evaluations of the seed from 0 in order of environment steps
      (as Mava writes it); ``step_count`` is ``env_steps``.
    * Metric names drop the ``eval/`` prefix. marl-eval wants a list per metric, one value
      per evaluation episode or a single value; the eval log keeps the mean over the
      episodes only, so each list holds that single mean. A metric is written for a seed
      only when every evaluation of that seed has it (``win_rate`` is null where the
      environment has no winner). ``metric`` names the metric every step must carry.
    * ``absolute_metrics`` comes from ``final.json`` ``"absolute"`` and is the *last* key
      of the seed, as marl-eval reads the last key as the absolute metrics. A run without
      them gets none, unless ``absolute_fallback`` puts the last evaluation there.
    """
    run = load_run(run_dir)
    env, task = _env_task(run.env)
    env, task = env_name or env, task_name or task
    by_seed: dict[int, list[dict[str, Any]]] = {}
    for row in run.evals:
        if "seed" in row and _number(row.get(metric)) is not None:
            by_seed.setdefault(int(row["seed"]), []).append(row)
    absolute = {
        int(e["seed"]): e
        for e in ((run.final or {}).get("absolute") or [])
        if isinstance(e, dict) and "seed" in e
    }
    seeds: dict[str, Any] = {}
    for s in sorted(set(by_seed) | set(absolute)):
        rows = {}
        for row in by_seed.get(s, []):  # later lines win for a repeated step
            rows[int(row.get("env_steps", row.get("update", 0)))] = row
        ordered = [rows[k] for k in sorted(rows)]
        keys = [
            k for k in _eval_keys(ordered) if all(_number(r.get(k)) is not None for r in ordered)
        ]
        entry: dict[str, Any] = {}
        for k, row in enumerate(ordered):
            step: dict[str, Any] = {"step_count": int(row.get("env_steps", 0))}
            step.update({_short(m): [float(row[m])] for m in keys})
            entry[f"step_{k}"] = step
        src = absolute.get(s)
        if src is None and absolute_fallback and ordered:
            src = ordered[-1]
        if src is not None:
            entry["absolute_metrics"] = {
                _short(m): [float(src[m])]
                for m in _eval_keys([src])
                if _number(src.get(m)) is not None
            }
        seeds[f"seed_{s}"] = entry
    return {env: {task: {run.algo: seeds}}}


def _eval_keys(rows: list[dict[str, Any]]) -> list[str]:
    """The ``eval/...`` metric names of ``rows`` (spread statistics left out), in order."""
    keys: dict[str, None] = {}
    for r in rows:
        for k in r:
            if k.startswith("eval/") and not k.endswith("_std"):
                keys[k] = None
    return list(keys)


def _short(metric: str) -> str:
    return metric.split("/", 1)[1] if metric.startswith("eval/") else metric.replace("/", "_")


def merge_marl_eval(parts: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merge :func:`to_marl_eval_json` outputs into one marl-eval file.

    Runs of the same algorithm on the same task become more seeds: a ``seed_<i>`` already
    present is renumbered to the next free index.
    """
    out: dict[str, Any] = {}
    for part in parts:
        for env, tasks in part.items():
            for task, algos in tasks.items():
                for algo, seeds in algos.items():
                    dst = out.setdefault(env, {}).setdefault(task, {}).setdefault(algo, {})
                    for name, data in seeds.items():
                        key, i = name, len(dst)
                        while key in dst:
                            key, i = f"seed_{i}", i + 1
                        dst[key] = data
    return out


def write_marl_eval_json(
    run_dirs: Sequence[str | Path], path: str | Path, *, metric: str = DEFAULT_METRIC
) -> Path:
    """Write the runs (or folders of runs) as one marl-eval raw JSON file; returns its path."""
    merged = merge_marl_eval(to_marl_eval_json(d, metric=metric) for d in expand_run_dirs(run_dirs))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable(merged), indent=2) + "\n")
    return path
