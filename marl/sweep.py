"""Sweeps: ``marl train -m`` runs a grid of ordinary training runs through Hydra's multirun.

``marl train -m algo=ippo,mappo seed=0,1,2 algo.lr=1e-4,3e-4`` expands the grid with Hydra's
own sweeper and hands the jobs to a Hydra launcher plugin: the basic one (sequential, in
this process), ``hydra/launcher=joblib`` (``--jobs N``: N processes in parallel, each pinned
to its share of the cores), ``hydra/launcher=submitit_slurm`` / ``submitit_local``
(a cluster), or ``hydra/sweeper=optuna`` (hyper-parameter search on the evaluation return).
A sweep directory holds::

    <logger.root>/<experiment or "sweep">/sweep-<time>/
        sweep.json        the command: overrides, swept keys, launcher, W&B group
        0/, 1/, ...       one ordinary run directory per job (``marl train resume=`` works)
        index.jsonl       one line per finished job: overrides, status, objective, error
        index.json        the same, sorted, with jobs that never reported marked failed

A failed job does not stop the sweep: its line says why, the other jobs go on, and the sweep
ends with exit code 1. ``marl compare <sweep dir>`` compares the jobs grouped by their swept
values (the seed excepted). All jobs share one W&B group (the sweep's name) and carry tags
``sweep=<name>`` and ``<key>=<value>`` for every swept key.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any
from unittest import mock

from marl.errors import ConfigError, MarlError, first_line

SWEEP_FILE = "sweep.json"
INDEX_FILE = "index.jsonl"
INDEX_JSON = "index.json"
SLOTS_DIR = ".slots"
# keys `marl compare` never groups a sweep by: the seed is the repetition and the
# environment is the task, not a setting
REPEAT_KEYS = ("seed", "env")


# --------------------------------------------------------------------------- expansion


def _key(override: str) -> str:
    """``++env.kwargs.N=3`` -> ``env.kwargs.N``."""
    return override.partition("=")[0].lstrip("+~")


def _values(overrides: list[str]) -> dict[str, str]:
    """``{key: value}`` of ``key=value`` overrides."""
    return {_key(o): o.partition("=")[2] for o in overrides if "=" in o}


def _hydra_override(o: str) -> bool:
    key = _key(o)
    return key == "hydra" or key.startswith(("hydra.", "hydra/"))


def _normalise(overrides: list[str]) -> list[str]:
    """``marl train``'s spelling rules on a sweep: ``env.kwargs.*`` may add keys, and integer
    keys take ``1e5`` (each value of a ``1e5,2e5`` list)."""
    from marl.config import TrainConfig, _integral

    out = []
    for o in overrides:
        if _hydra_override(o):
            out.append(o)
            continue
        key, sep, value = o.partition("=")
        if key.startswith("env.kwargs."):  # free-form: add or override the key
            key = f"++{key}"
        if sep and "," in value and not value.lstrip().startswith(("[", "{", "'", '"')):
            parts = [
                _integral(f"{key}={v}", TrainConfig).partition("=")[2] for v in value.split(",")
            ]
            o = f"{key}={','.join(parts)}"
        else:
            o = _integral(f"{key}{sep}{value}", TrainConfig)
        out.append(o)
    return out


def expand(overrides: list[str], grid: bool = True) -> tuple[list[list[str]], list[str]]:
    """The jobs of a grid (each a list of overrides, ``hydra.*`` left out) and the swept keys.

    ``grid=False`` (a search sweeper such as Optuna, whose values it draws itself, e.g.
    ``algo.lr=interval(1e-4,1e-2)``): one job of the fixed overrides only.

    Raises:
        ConfigError: for a malformed override.
    """
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    plain = [o for o in overrides if not _hydra_override(o)]
    try:
        parsed = OverridesParser.create().parse_overrides(plain)
        swept = [o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override()]
        if not grid:
            return [[o.input_line for o in parsed if not o.is_sweep_override()]], swept
        batches = BasicSweeper.split_arguments(parsed, None)
    except HydraException as err:
        raise ConfigError(f"bad sweep override: {str(err).strip().splitlines()[0]}") from None
    return [job for batch in batches for job in batch], swept


def _validate_jobs(jobs: list[list[str]], swept: list[str]) -> None:
    """Every job's config composes and validates, before anything is launched; an error
    names the job by its swept values."""
    from marl.config import compose

    seen: set[tuple[str, ...]] = set()
    for job in jobs:
        if tuple(job) in seen:
            continue
        seen.add(tuple(job))
        try:
            cfg = compose(job)
        except MarlError as err:
            name = " ".join(o for o in job if _key(o) in swept)
            raise ConfigError(f"sweep job {name or ' '.join(job)}: {err}") from None
        if cfg.resume:
            raise ConfigError("resume= cannot be swept; resume each job's run directory")


# ------------------------------------------------------------------------------ pinning


def _allowed_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def cpu_share(slot: int, num_slots: int, cpus: list[int]) -> list[int]:
    """The cores of ``slot`` when ``cpus`` are split evenly between ``num_slots`` jobs (every
    slot gets at least one core; with more slots than cores they share round-robin)."""
    if not cpus:
        return []
    if num_slots >= len(cpus):
        return [cpus[slot % len(cpus)]]
    per = len(cpus) // num_slots
    return cpus[slot * per : (slot + 1) * per]


def pin_process(cpus: list[int]) -> None:
    """Pin every thread of this process (XLA's pools included) to ``cpus``."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass


class _Slot:
    """One of ``n`` parallel-job slots of a sweep, held through an exclusive file lock, so
    jobs running at the same time never share a slot (and its cores)."""

    def __init__(self, sweep_dir: Path, n: int):
        folder = sweep_dir / SLOTS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.index, self._fd = -1, None
        while self._fd is None:
            for i in range(n):
                fd = os.open(folder / f"{i}.lock", os.O_CREAT | os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                self.index, self._fd = i, fd
                break
            else:
                time.sleep(0.2)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _parallel_jobs(launcher: Any, cpus: list[int]) -> int:
    """How many jobs the launcher runs at once on ``cpus`` (1: no pinning); joblib's
    ``n_jobs=-1`` is one per core."""
    target = str(launcher.get("_target_", "")) if launcher is not None else ""
    if "joblib" not in target.lower():
        return 1
    n = int(launcher.get("n_jobs") or 1)
    return max(len(cpus), 1) if n < 0 else n


# ---------------------------------------------------------------------------------- jobs


def _append_index(sweep_dir: Path, entry: dict) -> None:
    """One line in the sweep's index; a file lock keeps parallel jobs' lines whole."""
    with open(sweep_dir / INDEX_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(json.dumps(entry) + "\n")
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)


def _objective(run_dir: Path) -> float:
    """The final evaluation return averaged over the run's seeds (what Optuna maximises)."""
    final = json.loads((run_dir / "final.json").read_text())
    values = [r["eval/episode_return"] for r in final.get("final", [])]
    return float(sum(values) / len(values)) if values else math.nan


def _job(cfg: Any) -> float:
    """One sweep job (a Hydra task function): an ordinary ``marl train`` run in the job's
    directory. Every failure is caught and written to the index, so the sweep goes on."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    hc = HydraConfig.get()
    job_dir = Path(hc.runtime.output_dir)
    sweep_dir = Path(hc.sweep.dir)
    overrides = [o for o in hc.overrides.task if not _hydra_override(o)]
    entry: dict[str, Any] = {
        "job": int(hc.job.num),
        "overrides": overrides,
        "run_dir": str(job_dir),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    slot, t0 = None, time.time()
    try:
        meta = json.loads((sweep_dir / SWEEP_FILE).read_text())
        # the driver's cores: a reused worker process is already pinned to a share
        cpus = meta.get("cpus") or _allowed_cpus()
        n = _parallel_jobs(hc.launcher, cpus)
        if n > 1:
            slot = _Slot(sweep_dir, n)
            cores = cpu_share(slot.index, n, cpus)
            pin_process(cores)
            entry["cpus"] = cores
        from marl.cli import enable_compile_cache
        from marl.config import validate

        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        values = _values(overrides)
        tags = [f"sweep={meta['name']}"] + [
            f"{k}={values[k]}"[:64] for k in meta["swept"] if k in values
        ]
        cfg.logger.wandb.tags = [*cfg.logger.wandb.tags, *tags]
        if not cfg.logger.wandb.group:
            cfg.logger.wandb.group = meta["name"]
        cfg = validate(cfg)
        if (job_dir / "config.yaml").is_file():  # a requeued job (pre-empted): resume it
            _check_same_run(job_dir, cfg)
            cfg.resume = str(job_dir)
            entry["resumed"] = True
        enable_compile_cache()
        from marl.trainer import train

        train(cfg, run_dir=job_dir)
        entry["status"] = "ok"
        entry["objective"] = _objective(job_dir)
    except BaseException as err:  # noqa: BLE001 - the index records it, the sweep goes on
        if isinstance(err, KeyboardInterrupt):
            raise
        entry["status"] = "failed"
        entry["error"] = f"{type(err).__name__}: {first_line(err, 300)}"
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "error.txt").write_text(traceback.format_exc())
        print(f"sweep job {entry['job']} failed: {entry['error']}", file=sys.stderr)
    finally:
        if slot is not None:
            slot.release()
        entry["seconds"] = round(time.time() - t0, 2)
        _append_index(sweep_dir, entry)
    return float(entry.get("objective", math.nan))


def _check_same_run(job_dir: Path, cfg: Any) -> None:
    """A job directory that already holds a run is resumed only if it is this job's run (a
    requeued job); another sweep launched into the same directory must not take it over."""
    from omegaconf import OmegaConf

    from marl.config import to_dict, validate

    saved = to_dict(validate(OmegaConf.load(job_dir / "config.yaml")))
    now = to_dict(cfg)
    for d in (saved, now):
        d.pop("resume", None)
        d.pop("logger", None)
    if saved != now:
        diff = sorted(k for k in {*saved, *now} if saved.get(k) != now.get(k))
        raise ConfigError(
            f"{job_dir} holds another run (its config differs in {', '.join(diff)}); launch "
            "the sweep into a new directory"
        )


# -------------------------------------------------------------------------------- sweeps


def _has(overrides: list[str], key: str) -> bool:
    return any(_key(o) == key for o in overrides)


def _value(overrides: list[str], key: str) -> str | None:
    return _values(overrides).get(key)


def _sweep_dir(overrides: list[str], first_job: list[str]) -> Path:
    from marl.config import compose

    given = _value(overrides, "hydra.sweep.dir")
    if given:
        if "${" in given:
            raise ConfigError(
                f"hydra.sweep.dir={given}: give a plain path (the sweep directory is created "
                "before Hydra resolves interpolations)"
            )
        return Path(given)
    base = compose(first_job)
    name = base.experiment if _value(overrides, "experiment") else "sweep"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    parent = Path(base.logger.root) / name
    path = parent / f"sweep-{stamp}"
    i = 1
    while path.exists():
        path = parent / f"sweep-{stamp}-{i}"
        i += 1
    return path


def read_index(sweep_dir: Path | str) -> list[dict]:
    """The jobs of a sweep, sorted by job number: ``index.json`` if the sweep has ended, else
    the lines ``index.jsonl`` has so far."""
    sweep_dir = Path(sweep_dir)
    final = sweep_dir / INDEX_JSON
    if final.is_file():
        return json.loads(final.read_text())["jobs"]
    rows = {r["job"]: r for r in _read_lines(sweep_dir / INDEX_FILE)}
    swept = []
    if (sweep_dir / SWEEP_FILE).is_file():
        swept = json.loads((sweep_dir / SWEEP_FILE).read_text()).get("swept", [])
    for r in rows.values():  # a sweep still running (or whose driver was killed)
        r.setdefault("label", sweep_label(r.get("overrides", []), swept))
    return [rows[j] for j in sorted(rows)]


def _read_lines(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return rows


def is_sweep(path: Path | str) -> bool:
    """Whether ``path`` is a sweep directory of ``marl train -m``."""
    return (Path(path) / SWEEP_FILE).is_file()


def sweep_label(overrides: list[str], swept: list[str]) -> str:
    """The group of a job in ``marl compare``: its swept values, the seed and the
    environment excepted (``all`` when nothing else is swept)."""
    values = _values(overrides)
    parts = [f"{k}={values[k]}" for k in swept if k in values and k not in REPEAT_KEYS]
    return " ".join(parts) or "all"


def _finish_index(sweep_dir: Path, meta: dict, jobs: list[list[str]] | None) -> list[dict]:
    """``index.json``: every job once, those that never reported marked failed."""
    rows = {r["job"]: r for r in _read_lines(sweep_dir / INDEX_FILE)}  # later lines win
    expected = range(len(jobs)) if jobs is not None else sorted(rows)
    out = []
    for j in expected:
        row = rows.get(j)
        if row is None:
            row = {
                "job": j,
                "overrides": jobs[j] if jobs is not None else [],
                "run_dir": str(sweep_dir / str(j)),
                "status": "failed",
                "error": "no result: the job did not report (its process died or was killed)",
            }
        row["label"] = sweep_label(row["overrides"], meta["swept"])
        out.append(row)
    doc = {**meta, "jobs": out}
    (sweep_dir / INDEX_JSON).write_text(json.dumps(doc, indent=2))
    return out


def slurm_script(overrides: list[str], num_jobs: int, sweep_dir: Path | str) -> str:
    """The ``sbatch`` script ``hydra/launcher=submitit_slurm`` submits for a sweep of
    ``num_jobs`` jobs (one array job), from the ``hydra.launcher.*`` overrides, built by
    submitit's own Slurm executor with the parameters as the Hydra plugin passes them."""
    import submitit
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from marl.config import config_dir

    hydra_ov = [o for o in overrides if _hydra_override(o) and "hydra.sweep.dir" not in o]
    hydra_ov += [f"hydra.sweep.dir={sweep_dir}", "hydra.job.name=train"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = hydra_compose("config", overrides=hydra_ov, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    if "slurm" not in str(params.pop("_target_", "")).lower():
        raise ConfigError("a Slurm script needs hydra/launcher=submitit_slurm")
    folder = params.pop("submitit_folder")
    init = {f"slurm_{k}": params.pop(k) for k in ("max_num_timeout",) if k in params}
    with contextlib.ExitStack() as stack:
        if shutil.which("srun") is None:  # off the cluster: build the script all the same
            stack.enter_context(
                mock.patch.object(submitit.SlurmExecutor, "affinity", classmethod(lambda c: 1))
            )
        executor = submitit.AutoExecutor(cluster="slurm", folder=folder, **init)
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    slurm = executor._executor
    slurm.parameters["map_count"] = num_jobs  # one array job of num_jobs tasks
    return slurm._make_submission_file_text(slurm._submitit_command_str, "%A_%a")


def run_sweep(
    overrides: list[str], jobs_in_parallel: int | None = None, dry_run: bool = False
) -> tuple[Path, int]:
    """Run a ``marl train -m`` sweep; returns the sweep directory and the exit code (0 when
    every job succeeded, 1 otherwise).

    Args:
        overrides: Hydra overrides with sweeps (``seed=0,1,2``), launcher and sweeper choices
            (``hydra/launcher=joblib``, ``hydra/sweeper=optuna``) and ``hydra.*`` settings.
        jobs_in_parallel: ``N`` > 1 runs N jobs at once in local processes (the joblib
            launcher), each pinned to ``cores / N`` cores.
        dry_run: print the jobs (and for ``hydra/launcher=submitit_slurm`` the ``sbatch``
            script) and launch nothing; nothing is written.

    Raises:
        ConfigError: a job's config does not compose or validate (nothing is launched).
    """
    import hydra

    from marl.config import config_dir

    overrides = _normalise(list(overrides))
    if jobs_in_parallel is not None and jobs_in_parallel > 1:
        if _has(overrides, "hydra/launcher"):
            raise ConfigError("--jobs and hydra/launcher=... both choose the launcher; pick one")
        overrides += ["hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs_in_parallel}"]
    sweeper = _value(overrides, "hydra/sweeper") or "basic"
    jobs, swept = expand(overrides, grid=sweeper == "basic")
    _validate_jobs(jobs, swept)
    sweep_dir = _sweep_dir(overrides, jobs[0])
    if sweeper != "basic":  # e.g. optuna: the trials' values come from the sweeper
        jobs = None
        swept += [
            o.partition("=")[0].removeprefix("hydra.sweeper.params.")
            for o in overrides
            if o.startswith("hydra.sweeper.params.")
        ]
        if sweeper == "optuna" and not _has(overrides, "hydra.sweeper.direction"):
            overrides.append("hydra.sweeper.direction=maximize")  # the evaluation return
    if dry_run:
        for i, job in enumerate(jobs or []):
            print(f"#{i}: {' '.join(job)}")
        if "slurm" in (_value(overrides, "hydra/launcher") or ""):
            print(slurm_script(overrides, len(jobs or [1]), sweep_dir))
        return sweep_dir, 0
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # a sweep launched again into its directory: the previous launch's index is kept aside
    (sweep_dir / INDEX_JSON).unlink(missing_ok=True)
    if (sweep_dir / INDEX_FILE).is_file():
        os.replace(sweep_dir / INDEX_FILE, sweep_dir / f"index-{time.strftime('%H%M%S')}.jsonl")
    # the W&B group: sweep-<time>, or <experiment>-sweep-<time>
    prefix = "" if sweep_dir.parent.name == "sweep" else f"{sweep_dir.parent.name}-"
    meta = {
        "name": prefix + sweep_dir.name,
        "command": "marl train -m " + " ".join(overrides),
        "overrides": overrides,
        "swept": swept,
        "launcher": _value(overrides, "hydra/launcher") or "basic",
        "sweeper": sweeper,
        "num_jobs": len(jobs) if jobs is not None else None,
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cpus": _allowed_cpus(),  # what parallel jobs split between them
    }
    (sweep_dir / SWEEP_FILE).write_text(json.dumps(meta, indent=2))
    hydra_args = [o for o in overrides if not o.startswith("hydra.sweep.dir=")] + [
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}",
        "hydra.job.name=train",
    ]
    if not _has(overrides, "hydra.job_logging.root.level"):  # absl / orbax chatter
        hydra_args.append("hydra.job_logging.root.level=WARNING")
    task = hydra.main(config_path=str(config_dir()), config_name="config", version_base="1.3")(_job)
    argv = sys.argv
    sys.argv = ["marl-train", "-m", *hydra_args]
    error = None
    try:
        task()
    except SystemExit as err:  # Hydra reports a launcher failure and exits
        error = f"the launcher stopped (exit {err.code})"
    finally:
        sys.argv = argv
        _reset_hydra()
    rows = _finish_index(sweep_dir, meta, jobs)
    failed = [r for r in rows if r.get("status") != "ok"]
    _print_summary(sweep_dir, rows, meta["swept"])
    if error:
        print(f"marl train -m: {error}", file=sys.stderr)
    return sweep_dir, 1 if failed or error or not rows else 0


def _reset_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()


def _print_summary(sweep_dir: Path, rows: list[dict], swept: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sweep {sweep_dir}")
    for col in ("job", "swept values", "status", "eval return", "seconds"):
        table.add_column(col, overflow="fold")
    for r in rows:
        obj = r.get("objective")
        table.add_row(
            str(r["job"]),
            " ".join(o for o in r["overrides"] if _key(o) in swept),
            "ok" if r.get("status") == "ok" else f"failed: {r.get('error', 'no result')}",
            "" if obj is None or (isinstance(obj, float) and math.isnan(obj)) else f"{obj:.3f}",
            str(r.get("seconds", "")),
        )
    Console(width=max(120, Console().width), stderr=True).print(table)
