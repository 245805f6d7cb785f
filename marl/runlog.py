"""The run directory and metrics logging: JSONL files, W&B runs (one per seed), plots.

A run directory ``<root>/<experiment>/<run-id>/`` holds::

    config.yaml         the resolved config
    metrics.jsonl       one JSON object per (seed, update): training metrics
    eval.jsonl          one JSON object per (seed, update): evaluation metrics
    final.json          the final summary (write_final)
    wandb_ids.json      the W&B run id of each seed (for resuming the same W&B runs)
    wandb/              W&B's files (offline runs: ``wandb sync <run_dir>/wandb/offline-run-*``)
    learning_curve.png  (plot)
    matrices.jsonl      matrices a policy reports over training (a learned communication
                        graph): ``{"seed", "update", "env_steps", "name", "matrix"}``
    matrices/<name>/    each one as an image, ``seed<i>-update<u>.png``

Rows are ``{"seed": i, "update": u, "env_steps": n, "group/name": value, ...}`` where
``seed`` is the seed *index* ``0 <= i < num_seeds``; NaN and infinities are written as
``null``. W&B is optional: ``mode="disabled"`` never imports it.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from marl.errors import ConfigError, MarlError, first_line

__all__ = ["RunLogger", "new_run_dir", "read_jsonl", "WANDB_MODES"]

WANDB_MODES = ("offline", "online", "disabled")
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.jsonl"
MATRICES_FILE = "matrices.jsonl"
WANDB_IDS_FILE = "wandb_ids.json"


# ----------------------------------------------------------------------------- run dirs
def new_run_dir(root: Path | str, experiment: str) -> Path:
    """Create and return ``root/experiment/<YYYYmmdd-HHMMSS>-<suffix>``, never an existing one."""
    parent = Path(root) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        path = parent / run_id
        try:
            path.mkdir()  # atomic: fails if another process took the name
        except FileExistsError:
            continue
        return path


# -------------------------------------------------------------------------------- JSON
def _clean(value: Any) -> Any:
    """``value`` as plain JSON types; NaN/inf become ``None``."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    # numpy / jax scalars and arrays
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        return _clean(tolist())
    item = getattr(value, "item", None)
    if callable(item):
        return _clean(item())
    return str(value)


def _dumps(obj: Any) -> str:
    return json.dumps(_clean(obj), allow_nan=False)


def read_jsonl(path: Path | str) -> list[dict]:
    """The rows of a JSONL file; a missing file is empty and torn lines are skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with path.open() as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if isinstance(row, dict):
                rows.append(row)
    return rows


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _to_container(config: Any) -> dict:
    if OmegaConf.is_config(config):
        return OmegaConf.to_container(config, resolve=True)  # type: ignore[return-value]
    return dict(config or {})


def _name_of(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        for key in ("name", "id", "_name_"):
            if isinstance(value.get(key), str):
                return value[key]
    return None


def _wandb_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _artifact_name(name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in name)
    return safe.strip("-") or "artifact"


# ---------------------------------------------------------------------------- logger
class RunLogger:
    """Writes a run directory and logs metrics to JSONL files and W&B (one run per seed).

    ``wandb`` is ``{"mode": "offline"|"online"|"disabled", "project": str, "entity": str|None,
    "group": str|None, "tags": list[str], "job_type": str}`` (optional ``"init_timeout"``
    in seconds). ``resume_update=u`` reopens an existing ``run_dir``: the JSONL files keep
    only the rows with ``update <= u`` and the same W&B runs are resumed.
    """

    def __init__(
        self,
        run_dir: Path | str,
        config: Mapping | Any,
        num_seeds: int,
        *,
        wandb: Mapping,
        resume_update: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.config = _to_container(config)
        self.num_seeds = int(num_seeds)
        if self.num_seeds < 1:
            raise ConfigError(f"num_seeds must be >= 1, got {num_seeds}")
        self.wandb_cfg = dict(wandb or {})
        self.mode = str(self.wandb_cfg.get("mode", "offline"))
        if self.mode not in WANDB_MODES:
            raise ConfigError(
                f"wandb.mode must be one of {', '.join(WANDB_MODES)}, got {self.mode!r}"
            )
        self.resume_update = resume_update
        self.run_id = self.run_dir.name
        self.experiment = str(self.config.get("experiment") or self.run_dir.parent.name)
        self._runs: list[Any] = []
        self._families: list[set[str]] = []
        self._warned: set[str] = set()
        self._closed = False

        if resume_update is not None:
            if not self.run_dir.is_dir():
                raise MarlError(f"cannot resume: run directory {self.run_dir} does not exist")
            self._truncate(int(resume_update))
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(_clean(self.config)), self.run_dir / "config.yaml")
        self.metrics_path = self.run_dir / METRICS_FILE
        self._ids_path = self.run_dir / WANDB_IDS_FILE
        self.eval_path = self.run_dir / EVAL_FILE
        if self.mode != "disabled":
            self._init_wandb()

    # ------------------------------------------------------------------------ warnings
    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # ---------------------------------------------------------------------------- W&B
    def _wandb_ids(self) -> list[str]:
        """The W&B run id of every seed: stored at creation, reused on resume."""
        ids: list[str] = []
        if self._ids_path.exists():
            try:
                ids = [str(i) for i in json.loads(self._ids_path.read_text())["ids"]]
            except (ValueError, KeyError, TypeError):
                ids = []
        if len(ids) < self.num_seeds:
            ids += [_wandb_id() for _ in range(self.num_seeds - len(ids))]
            self._save_wandb_ids(ids)
        return ids

    def _save_wandb_ids(self, ids: list[str]) -> None:
        text = json.dumps({"run_id": self.run_id, "ids": ids}, indent=2) + "\n"
        _write_atomic(self._ids_path, text)

    def _init_wandb(self) -> None:
        import wandb

        cfg = self.wandb_cfg
        ids = self._wandb_ids()
        mode = self.mode
        settings = wandb.Settings(
            init_timeout=float(cfg.get("init_timeout", 90.0)),
            console="off",  # several runs in one process: never hijack stdout
        )
        for i in range(self.num_seeds):
            kwargs = dict(
                project=cfg.get("project") or "marl",
                entity=cfg.get("entity"),
                group=cfg.get("group") or self.experiment,
                job_type=cfg.get("job_type") or "train",
                tags=list(cfg.get("tags") or []),
                name=f"{self.run_id}/seed{i}",
                id=ids[i],
                resume="allow",
                dir=str(self.run_dir),
                config={**_clean(self.config), "seed_index": i},
                reinit="create_new",
                settings=settings,
            )
            try:
                try:
                    run = wandb.init(mode=mode, **kwargs)
                except Exception as e:  # any online failure: go offline
                    if mode != "online":
                        raise
                    self._warn_once(
                        "online",
                        f"W&B online init failed ({first_line(e)}); logging offline to "
                        f"{self.run_dir / 'wandb'} instead (upload later with "
                        f"`wandb sync {self.run_dir / 'wandb'}/offline-run-*`)",
                    )
                    mode = "offline"
                    # W&B's service keeps a timed-out run's id busy: take a new one, and
                    # drop the failed online run's directory so `wandb sync` never sees it
                    for stale in (self.run_dir / "wandb").glob(f"run-*-{ids[i]}"):
                        shutil.rmtree(stale, ignore_errors=True)
                    ids[i] = kwargs["id"] = _wandb_id()
                    self._save_wandb_ids(ids)
                    run = wandb.init(mode=mode, **kwargs)
            except Exception as e:  # W&B never stops training
                self._warn_once(
                    "init", f"W&B {mode} init failed ({first_line(e)}); W&B logging disabled"
                )
                self._finish_runs()
                self.mode = "disabled"
                return
            self._runs.append(run)
            self._families.append(set())
            try:
                run.define_metric("env_steps")
                # every metric against environment steps, so runs of different batch sizes
                # and update counts line up in one W&B chart
                run.define_metric("*", step_metric="env_steps")
            except Exception as e:
                self._warn_once("define", f"W&B define_metric failed: {e}")
        self.mode = mode

    def _wandb_log(self, rows: Iterable[Mapping]) -> None:
        if not self._runs:
            return
        for row in rows:
            seed = row.get("seed")
            if not isinstance(seed, int) or not 0 <= seed < len(self._runs):
                self._warn_once(
                    "seed", f"row seed {seed!r} is not a seed index 0..{len(self._runs) - 1}"
                )
                continue
            run = self._runs[seed]
            data = {k: v for k, v in row.items() if k != "seed" and v is not None}
            try:
                for key in data:
                    if "/" in key:
                        family = key.split("/", 1)[0]
                        if family not in self._families[seed]:
                            run.define_metric(f"{family}/*", step_metric="env_steps")
                            self._families[seed].add(family)
                run.log(data)
            except Exception as e:  # logging must never stop training
                self._warn_once("log", f"W&B logging failed: {e}")

    # --------------------------------------------------------------------------- files
    def _truncate(self, update: int) -> None:
        for name in (METRICS_FILE, EVAL_FILE, MATRICES_FILE):
            path = self.run_dir / name
            if not path.exists():
                continue
            keep = [
                r
                for r in read_jsonl(path)
                if isinstance(r.get("update"), int | float) and r["update"] <= update
            ]
            _write_atomic(path, "".join(_dumps(r) + "\n" for r in keep))

    def _append(self, path: Path, rows: Iterable[Mapping]) -> list[dict]:
        clean = [_clean(dict(r)) for r in rows]
        if clean:
            with path.open("a") as f:
                f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in clean))
                f.flush()
        return clean

    def log_train(self, rows: Iterable[Mapping]) -> None:
        """Append training rows to ``metrics.jsonl`` and log them to the seeds' W&B runs."""
        self._wandb_log(self._append(self.metrics_path, rows))

    def log_eval(self, rows: Iterable[Mapping]) -> None:
        """Append evaluation rows to ``eval.jsonl`` and log them to the seeds' W&B runs."""
        self._wandb_log(self._append(self.eval_path, rows))

    def log_matrices(self, update: int, env_steps: int, matrices: Mapping[str, Any]) -> None:
        """Log per-seed matrices ``{name: [S, H, W]}`` (e.g. ``comm/adjacency``): rows in
        ``matrices.jsonl``, a PNG per seed under ``matrices/<name>/`` and a W&B image."""
        import numpy as np

        rows, images = [], []
        for name, value in matrices.items():
            arr = np.asarray(value, dtype=np.float32)
            folder = self.run_dir / "matrices" / name.replace("/", "_")
            folder.mkdir(parents=True, exist_ok=True)
            for s in range(arr.shape[0]):
                rows.append(
                    {
                        "seed": s,
                        "update": update,
                        "env_steps": env_steps,
                        "name": name,
                        "matrix": arr[s].tolist(),
                    }
                )
                png = folder / f"seed{s}-update{update}.png"
                plot_matrix(arr[s], png, f"{name} (seed {s}, {env_steps:,} steps)")
                images.append((s, name, png))
        self._append(self.run_dir / MATRICES_FILE, rows)
        if not self._runs:
            return
        try:
            import wandb

            for s, name, png in images:
                if s < len(self._runs):
                    self._runs[s].log({name: wandb.Image(str(png)), "env_steps": env_steps})
        except Exception as e:  # logging must never stop training
            self._warn_once("image", f"W&B image logging failed: {e}")

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as ``run_dir/name`` (``.json`` added if missing), atomically."""
        if not name.endswith(".json"):
            name += ".json"
        path = self.run_dir / name
        _write_atomic(path, json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n")
        return path

    def write_final(self, final: Mapping) -> Path:
        """Write the final summary ``final.json``; also the W&B runs' summaries."""
        path = self.write_json("final.json", final)
        clean = _clean(dict(final))
        for run in self._runs:
            try:
                for key, value in clean.items():
                    if isinstance(value, int | float | str | bool):
                        run.summary[f"final/{key}"] = value
            except Exception as e:
                self._warn_once("summary", f"W&B summary update failed: {e}")
        return path

    def log_artifact(self, path: Path | str, name: str, type: str = "checkpoint") -> None:
        """Log a file or directory (a checkpoint) as a W&B artifact of the seed-0 run.

        Skipped when W&B is disabled; a failure only warns.
        """
        if not self._runs:
            return
        try:
            import wandb

            path = Path(path)
            artifact = wandb.Artifact(_artifact_name(name), type=type)
            if path.is_dir():
                artifact.add_dir(str(path))
            else:
                artifact.add_file(str(path))
            self._runs[0].log_artifact(artifact)
        except Exception as e:  # artifacts never fail a run
            warnings.warn(f"W&B artifact {name!r} from {path} not logged: {e}", stacklevel=2)

    def log_video(self, path: Path | str, env_steps: int, key: str = "eval/video") -> None:
        """Log a GIF / MP4 to the seed-0 W&B run as media (offline runs keep it for ``wandb
        sync``). Skipped when W&B is disabled; a failure only warns."""
        if not self._runs:
            return
        try:
            import wandb

            path = Path(path)
            video = wandb.Video(str(path), format=path.suffix.lstrip("."))
            self._runs[0].log({key: video, "env_steps": int(env_steps)})
        except Exception as e:  # media never fails a run
            self._warn_once("video", f"W&B video {path} not logged: {e}")

    # ---------------------------------------------------------------------------- plot
    def plot(self, path: Path | str | None = None) -> Path:
        """Learning curve PNG (default ``run_dir/learning_curve.png``); returns its path."""
        path = Path(path) if path is not None else self.run_dir / "learning_curve.png"
        plot_learning_curve(
            read_jsonl(self.metrics_path), read_jsonl(self.eval_path), path, self._title()
        )
        return path

    def _title(self) -> str:
        parts = [self.experiment]
        for key in ("env", "algo"):
            name = _name_of(self.config.get(key))
            if name:
                parts.append(name)
        return " / ".join(parts)

    # --------------------------------------------------------------------------- close
    def _finish_runs(self, exit_code: int | None = None) -> None:
        runs, self._runs = self._runs, []
        if not runs:
            return
        for run in runs:
            try:
                run.finish(exit_code=exit_code)
            except Exception as e:  # W&B never stops training
                self._warn_once("finish", f"W&B finish failed: {e}")
        _teardown_wandb_if_idle()

    def close(self, exit_code: int | None = None) -> None:
        """Finish the W&B runs (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._finish_runs(exit_code)

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(exit_code=1 if exc_type is not None else None)

    @property
    def wandb_runs(self) -> list[Any]:
        """The open W&B runs, one per seed (empty when disabled or closed)."""
        return list(self._runs)


def _teardown_wandb_if_idle() -> None:
    """Shut W&B's service process down when no run of this process is active any more.

    ``run.finish()`` returns before W&B's service has closed the run's files (an offline
    run's ``.wandb`` log may still be unwritten, and its id stays busy); the teardown waits
    for that. Runs that other loggers of this process still have open are left alone.
    """
    try:
        import wandb
        from wandb.sdk import wandb_setup

        singleton = getattr(wandb_setup, "_singleton", None)
        if singleton is None or getattr(singleton, "_active_runs", [None]):
            return
        wandb.teardown()
    except Exception as e:  # W&B never stops training
        warnings.warn(f"W&B teardown failed: {e}", RuntimeWarning, stacklevel=3)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float], list[float], list]:
    """x (mean env_steps), mean, min, max over seeds of ``key`` per update."""
    by_update: dict[int, list[tuple[float, float]]] = {}
    for r in rows:
        v, x = r.get(key), r.get("env_steps")
        if isinstance(v, int | float) and isinstance(x, int | float) and math.isfinite(v):
            by_update.setdefault(int(r.get("update", x)), []).append((float(x), float(v)))
    xs, mean, lo, hi = [], [], [], []
    for u in sorted(by_update):
        pts = by_update[u]
        xs.append(sum(p[0] for p in pts) / len(pts))
        vals = [p[1] for p in pts]
        mean.append(sum(vals) / len(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return xs, mean, lo, hi


def plot_learning_curve(
    train_rows: list[dict], eval_rows: list[dict], path: Path | str, title: str = ""
) -> Path:
    """Plot the mean (min/max band over seeds) of ``train/episode_return`` and the
    ``eval/episode_return`` (and ``eval/win_rate``) points against env steps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # the object-oriented API on the Agg canvas: no pyplot, no global backend, no display
    fig = Figure(figsize=(8, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    xs, mean, lo, hi = _series(train_rows, "train/episode_return")
    if xs:
        ax.plot(xs, mean, color="C0", label="train return (mean over seeds)")
        ax.fill_between(xs, lo, hi, color="C0", alpha=0.2, label="train min/max")
    xs, mean, lo, hi = _series(eval_rows, "eval/episode_return")
    if xs:
        ax.errorbar(
            xs,
            mean,
            yerr=[
                [m - a for m, a in zip(mean, lo, strict=True)],
                [b - m for m, b in zip(mean, hi, strict=True)],
            ],
            fmt="o",
            color="C1",
            capsize=3,
            label="eval return (mean, min/max)",
        )
    wx, wmean, _, _ = _series(eval_rows, "eval/win_rate")
    if wx:
        ax2 = ax.twinx()
        ax2.plot(wx, wmean, "s--", color="C2", label="eval win rate")
        ax2.set_ylabel("win rate")
        ax2.set_ylim(-0.05, 1.05)
        ax2.legend(loc="lower right")
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.set_title(title or "learning curve")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left")
    else:
        ax.text(
            0.5, 0.5, "no episode returns yet", ha="center", va="center", transform=ax.transAxes
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_matrix(matrix: Any, path: Path | str, title: str = "") -> Path:
    """A small heat map of ``matrix`` (rows: receivers, columns: senders) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(matrix[0])))
    ax.set_yticks(range(len(matrix)))
    ax.set_xlabel("sender")
    ax.set_ylabel("receiver")
    ax.set_title(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(str(path))
    return Path(path)
