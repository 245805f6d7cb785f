"""``marl train``: the training loop around the jitted update, on both environment kinds.

Training runs in chunks of updates between evaluations. On a pure-JAX environment one chunk
is one compiled program (``lax.scan`` over updates, ``vmap`` over seeds); on a PettingZoo
environment the rollout steps on the host and the update is the same jitted function. After
each chunk the host logs the per-update metrics, evaluates, and checkpoints the whole training
state (parameters, optimiser, environment state, PRNG key, counters), so a resumed run ends
with the same metrics as an uninterrupted one on the CPU.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from omegaconf import DictConfig, OmegaConf

from marl.agents import make_policy
from marl.config import to_dict, validate
from marl.envs.core import EnvSpec
from marl.errors import ConfigError, MarlError
from marl.parallel import (
    broadcast_text,
    gather_to_host,
    make_mesh,
    runner_shardings,
    select_devices,
    to_global,
)
from marl.ppo import PPOConfig, TrainState, ValueNorm, scan
from marl.programs import Program, ProgramCache
from marl.rollout import (
    HostRollout,
    Runner,
    episode_sums,
    make_jax_eval,
    make_jax_update,
    make_update,
    policy_input,
)


class NonFiniteLoss(MarlError):
    """A loss became NaN or infinite; the run stops and keeps its last good checkpoint."""

    exit_code = 3


# ------------------------------------------------------------------------------- environments
def load_factory(path: str):
    """``"module:callable"`` -> the callable."""
    mod, _, attr = path.partition(":")
    try:
        return getattr(importlib.import_module(mod), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"env.factory {path!r} cannot be imported: {err}") from None


def make_env(cfg: DictConfig, num_copies: int | None = None):
    """The environment of ``cfg.env``: a :class:`JaxArrayEnv`, or for ``kind=pettingzoo`` a
    vectorized bridge with ``num_copies`` copies."""
    from marl import envs

    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    if cfg.env.kind == "jax":
        return envs.make_array_env(cfg.env.name, agent_id=cfg.env.agent_id, **kwargs)
    if not cfg.env.factory:
        raise ConfigError("env.kind=pettingzoo needs env.factory ('module:callable')")
    from functools import partial

    from marl.envs.pettingzoo_vector import pettingzoo_vector_env

    fn = partial(load_factory(cfg.env.factory), **kwargs)
    return pettingzoo_vector_env(
        fn,
        num_copies,
        name=cfg.env.name,
        mode=cfg.env.workers,
        agent_id=cfg.env.agent_id,
        num_workers=cfg.env.num_workers,
    )


def ppo_config(algo: DictConfig) -> PPOConfig:
    """The PPO part of an algorithm config."""
    return PPOConfig(**{f.name: algo[f.name] for f in dataclasses.fields(PPOConfig)})


@dataclass
class Schedule:
    """How a run's updates split into chunks between evaluations."""

    num_updates: int
    steps_per_update: int
    chunk: int

    @staticmethod
    def of(cfg: DictConfig) -> Schedule:
        per = cfg.num_envs * cfg.algo.rollout_len
        n = cfg.total_timesteps // per
        if n < 1:
            raise ConfigError(
                f"total_timesteps={cfg.total_timesteps} is less than one update "
                f"(num_envs x algo.rollout_len = {per})"
            )
        return Schedule(n, per, max(1, math.ceil(n / cfg.eval.num_evals)))

    def chunks(self, start: int):
        u = start
        while u < self.num_updates:
            n = min(self.chunk, self.num_updates - u)
            yield u, n
            u += n


def _check_minibatches(cfg: DictConfig) -> None:
    a = cfg.algo
    if a.network.recurrent:
        if cfg.num_envs % a.num_minibatches:
            raise ConfigError(
                f"recurrent policies split env copies into minibatches: num_envs="
                f"{cfg.num_envs} must be a multiple of algo.num_minibatches="
                f"{a.num_minibatches}"
            )
    elif (cfg.num_envs * a.rollout_len) % a.num_minibatches:
        raise ConfigError("num_envs x algo.rollout_len must be a multiple of algo.num_minibatches")


# ------------------------------------------------------------------------------- the trainer
class Trainer:
    """One training run (several vmapped seeds) from a validated config."""

    def __init__(self, cfg: DictConfig, run_dir: Path | None):
        self.cfg = cfg
        self.run_dir = run_dir
        self.sched = Schedule.of(cfg)
        _check_minibatches(cfg)
        S, E = cfg.num_seeds, cfg.num_envs
        self.S, self.E = S, E
        self.kind = cfg.env.kind
        self.env = make_env(cfg, S * E)
        self.spec: EnvSpec = self.env.spec
        if self.spec.games and cfg.eval.episodes < len(self.spec.games):
            raise ConfigError(
                f"eval.episodes={cfg.eval.episodes}: {self.spec.name} plays "
                f"{len(self.spec.games)} games, one evaluation episode each at least"
            )
        self.policy = make_policy(cfg.algo, self.spec, self.sched.num_updates)
        self.optimizer = self.policy.optimizer()
        self.ppo = ppo_config(cfg.algo)
        eval_steps = self.spec.max_steps or cfg.eval.max_steps
        self.eval_steps = eval_steps
        self._seed = np.uint32(cfg.seed % 2**32)
        self.eval_key: jax.Array | None = None  # set by `init_runner`
        self._summaries = None  # jitted policy.summaries, on first use
        self.mesh = None
        if self.kind == "jax" and str(cfg.devices) != "1":
            devices = select_devices(str(cfg.devices), E)
            if len(devices) > 1:
                self.mesh = make_mesh(devices)
        # single-device pure-JAX runs keep their programs exported (marl/programs.py): a
        # relaunch of the same config traces nothing
        self.programs = None
        # (not for attack environments: their victims' parameters are constants of the
        # programs, and the config names the victims' run, not the parameters it holds)
        if (
            self.kind == "jax"
            and self.mesh is None
            and jax.process_count() == 1
            and self.spec.attack is None
        ):
            self.programs = ProgramCache.for_config(to_dict(cfg))
        # Key derivation and the whole initial state are one compiled program (see
        # `init_runner`): every eager JAX op at start-up costs a compile of its own.
        self._init = self._program(
            "init", lambda: jax.jit(self._init_fn), (jax.ShapeDtypeStruct((), np.uint32),)
        )
        if self.kind == "jax":
            if self.mesh is None:
                self._chunk = None  # built on first use: evaluation and rendering skip it
            else:
                self._shardings = runner_shardings(self.mesh, self._abstract_runner())
                replicated = NamedSharding(self.mesh, PartitionSpec())
                self._chunk = self._build_chunk(out_shardings=(self._shardings, replicated))
            self._eval = {}
        else:
            self.host = HostRollout(self.env, self.policy, S, E)
            self._update = jax.jit(jax.vmap(make_update(self.policy, self.ppo, self.optimizer)))

    def _program(self, name: str, build, abstract_args: tuple):
        """``build()`` (a jitted function), or its exported copy from the program cache."""
        if self.programs is not None:
            program = self.programs.get(name, build, abstract_args)
            if program is not None:
                return program
        return build()

    def _build_chunk(self, **jit_kwargs):
        """The jitted training chunk: ``sched.chunk`` updates, vmapped over the seeds."""
        # jitted so that its trace for `eval_shape` below is reused inside `chunk`
        update = make_jax_update(
            self.env, self.policy, self.ppo, self.optimizer, self.cfg.algo.rollout_len
        )
        run = jax.jit(update)
        one_seed = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype, weak_type=x.weak_type),
            self._abstract_runner(),
        )
        metrics_shape = jax.eval_shape(run, one_seed)[1]

        def chunk(runner, n):
            # Always `sched.chunk` scan steps, the ones past `n` skipped: the shorter last
            # chunk reuses the same compiled program instead of compiling its own.
            def body(r, i):
                skip = (r, jax.tree.map(lambda m: jnp.zeros(m.shape, m.dtype), metrics_shape))
                return jax.lax.cond(i < n, run, lambda r: skip, r)

            return scan(body, runner, jnp.arange(self.sched.chunk))

        return jax.jit(jax.vmap(chunk, in_axes=(0, None)), **jit_kwargs)

    # ---------------------------------------------------------------- state
    def _abstract_runner(self) -> Runner:
        """Shapes of :meth:`init_runner`'s result, without computing it (the trace is cached
        and reused by the real call; an exported program knows them without tracing)."""
        if isinstance(self._init, Program):
            return self._init.out_shape[0]
        return jax.eval_shape(self._init, self._seed)[0]

    def _init_fn(self, seed: jax.Array) -> tuple[Runner, jax.Array]:
        """``(runner [S, ...], evaluation key)`` from the run's seed."""
        S, E = self.S, self.E
        root = jax.random.PRNGKey(seed)
        seed_keys = jax.random.split(root, S)
        keys = jax.vmap(lambda k: jax.random.split(k, 3))(seed_keys)
        # Parameters seed by seed, not vmapped: vmapped initialisation of the GRU hangs
        # XLA:CPU (jax 0.10.2). The nested jit traces `policy.init` once for all seeds.
        init_params = jax.jit(self.policy.init)
        params = jax.tree.map(lambda *x: jnp.stack(x), *[init_params(keys[s, 0]) for s in range(S)])
        aux = None  # a policy's own learners (AMI's): seed by seed too (vmapped, it hangs)
        if hasattr(self.policy, "init_aux"):
            init_aux = jax.jit(self.policy.init_aux)
            aux = jax.tree.map(lambda *x: jnp.stack(x), *[init_aux(keys[s, 1]) for s in range(S)])

        def init(key, params, aux):
            _, k_env, k_run = jax.random.split(key, 3)
            train = TrainState(params, self.optimizer.init(params), ValueNorm.create(), aux=aux)
            if self.kind == "jax":
                env_state, ts = self.env.reset_batch(k_env, E)
            else:
                env_state, ts = None, None
            return Runner(
                train, env_state, ts, self.policy.initial_hidden(E), jnp.ones((E,), bool), k_run
            )

        return jax.vmap(init)(seed_keys, params, aux), jax.random.fold_in(root, 7919)

    def init_runner(self) -> Runner:
        """Fresh training state, ``[S, ...]``; also sets :attr:`eval_key`."""
        runner, self.eval_key = self._init(self._seed)
        if self.mesh is not None and hasattr(self, "_shardings"):
            runner = to_global(runner, self._shardings)
        if self.kind != "jax":
            runner = runner._replace(ts=self.host.reset(seed=int(self.cfg.seed)))
        return runner

    def restart_host_envs(self, runner: Runner, update: int) -> Runner:
        """Reset the worker copies with a seed derived from the update (after an evaluation
        and on resume, so both paths see the same episodes)."""
        ts = self.host.reset(seed=int(self.cfg.seed) + 1_000_003 * update)
        return runner._replace(ts=ts, first=jnp.ones_like(runner.first))

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, params, key, episodes: int, greedy: bool | None = None):
        """Per-seed ``(returns, lengths, wins)`` ``[S, episodes]`` of ``params [S, ...]``."""
        greedy = self.cfg.eval.greedy if greedy is None else greedy
        if jax.process_count() > 1:  # every process evaluates a local copy of the parameters
            params = jax.tree.map(np.asarray, params)
        if self.kind == "jax":
            k = (episodes, greedy)
            if k not in self._eval:

                def build():
                    ev = make_jax_eval(self.env, self.policy, episodes, self.eval_steps, greedy)
                    return jax.jit(jax.vmap(ev, in_axes=(0, None)))

                abstract = (
                    self._abstract_runner().train.params,
                    jax.ShapeDtypeStruct(jnp.shape(key), jnp.asarray(key).dtype),
                )
                if self.mesh is None:
                    self._eval[k] = self._program(f"eval-{episodes}-{int(greedy)}", build, abstract)
                else:
                    self._eval[k] = build()
            ret, length, won, finished = jax.device_get(self._eval[k](params, key))
            if not finished.all():
                raise MarlError(
                    f"evaluation episodes did not end within {self.eval_steps} "
                    "steps; raise eval.max_steps"
                )
            return ret, length, won
        return self.host.evaluate(params, key, episodes, greedy, self.eval_steps)

    def games(self, ret: np.ndarray) -> dict[str, np.ndarray]:
        """Episode indices of each game for evaluation results ``ret [S, episodes]`` of a
        population environment (empty otherwise)."""
        if not self.spec.games or self.kind != "jax":
            return {}
        ids = self.env.game_ids(ret.shape[1])
        return {name: np.flatnonzero(ids == g) for g, name in enumerate(self.spec.games)}

    def summaries(self, params) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Per-seed ``(scalars [S], matrices [S, H, W])`` of the policy's ``summaries`` (a
        learned communication graph and its density); empty for policies without one."""
        fn = getattr(self.policy, "summaries", None)
        if fn is None:
            return {}, {}
        if self._summaries is None:
            self._summaries = jax.jit(jax.vmap(fn))
        if jax.process_count() > 1:
            params = jax.tree.map(np.asarray, params)
        out = jax.device_get(self._summaries(params))
        scalars = {k: v for k, v in out.items() if v.ndim == 1}
        return scalars, {k: v for k, v in out.items() if v.ndim == 3}

    # ---------------------------------------------------------------- one chunk
    def run_chunk(self, runner: Runner, n: int) -> tuple[Runner, dict[str, np.ndarray]]:
        """``n`` updates; metrics ``[S, n]`` per name."""
        if self.kind == "jax":
            if self.mesh is not None:  # e.g. a runner restored from a checkpoint
                runner = to_global(runner, self._shardings)
            if self._chunk is None:
                abstract = (self._abstract_runner(), jax.ShapeDtypeStruct((), jnp.int32))
                self._chunk = self._program("chunk", self._build_chunk, abstract)
            runner, metrics = self._chunk(runner, jnp.int32(n))
            return runner, jax.tree.map(lambda m: m[:, :n], jax.device_get(metrics))
        rows = []
        for _ in range(n):
            key, k_roll, k_upd = jax.vmap(lambda k: jax.random.split(k, 3))(runner.key).swapaxes(
                0, 1
            )
            hidden0 = runner.hidden
            ts, hidden, first, traj, steps = self.host.rollout(
                runner.train.params,
                runner.ts,
                runner.hidden,
                runner.first,
                k_roll[0],
                self.cfg.algo.rollout_len,
                jnp.asarray(runner.train.update, jnp.int32),
            )
            last_inp = jax.vmap(policy_input)(ts, first)
            train, metrics = self._update(runner.train, traj, hidden0, last_inp, hidden, k_upd)
            metrics = jax.device_get(metrics)
            # steps: [S, T, E]; per-seed sums
            metrics.update(episode_sums(steps, self.spec.has_win, axis=(1, 2)))
            rows.append(metrics)
            runner = Runner(train, None, ts, hidden, first, key)
        return runner, {k: np.stack([r[k] for r in rows], 1) for k in rows[0]}


# ------------------------------------------------------------------------------- metrics
def train_rows(
    metrics: dict[str, np.ndarray],
    start: int,
    steps_per_update: int,
    has_win: bool,
    sps: float,
    elapsed: float,
) -> list[dict[str, Any]]:
    """Per-seed, per-update rows of the metrics of a chunk (``[S, n]`` arrays)."""
    S, n = metrics["episodes"].shape
    rows = []
    for i in range(n):
        u = start + i + 1
        for s in range(S):
            eps = float(metrics["episodes"][s, i])
            row: dict[str, Any] = {"seed": s, "update": u, "env_steps": u * steps_per_update}
            row["train/episode_return"] = float(metrics["return_sum"][s, i]) / eps if eps else None
            row["train/episode_length"] = float(metrics["length_sum"][s, i]) / eps if eps else None
            if has_win:
                row["train/win_rate"] = float(metrics["won_sum"][s, i]) / eps if eps else None
            row["train/episodes"] = eps
            for k, v in metrics.items():
                if k.startswith("game/"):  # per game of a population environment
                    _, game, what = k.split("/")
                    if what == "episodes":
                        n_g = float(v[s, i])
                        r_g = float(metrics[f"game/{game}/return_sum"][s, i])
                        row[f"train/{game}/episode_return"] = r_g / n_g if n_g else None
                elif "/" in k:
                    row[k] = float(v[s, i])
            row["perf/sps"] = sps
            row["perf/elapsed_s"] = elapsed  # wall time since the run (or resume) started
            rows.append(row)
    return rows


def check_finite(metrics: dict[str, np.ndarray], start: int) -> None:
    """Stop on a non-finite loss, naming the first bad update and seed."""
    bad = ~np.isfinite(metrics["loss/total"])
    if bad.any():
        s, i = map(int, np.argwhere(bad)[0])
        raise NonFiniteLoss(
            f"non-finite loss at update {start + i + 1} (seed index {s}); "
            "the run stops and keeps its last good checkpoint"
        )


def eval_rows(
    ret, length, won, update: int, env_steps: int, has_win: bool, games: dict | None = None
):
    """Per-seed evaluation rows of ``[S, episodes]`` arrays; ``games`` (name -> episode
    indices, for population environments) adds ``eval/<game>/episode_return``."""
    rows = []
    for s in range(ret.shape[0]):
        row = {
            "seed": s,
            "update": update,
            "env_steps": env_steps,
            "eval/episode_return": float(np.mean(ret[s])),
            "eval/episode_return_std": float(np.std(ret[s])),
            "eval/episode_length": float(np.mean(length[s])),
            "eval/win_rate": float(np.mean(won[s])) if has_win else None,
            "episodes": int(ret.shape[1]),
        }
        for name, idx in (games or {}).items():
            row[f"eval/{name}/episode_return"] = float(np.mean(ret[s, idx]))
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------- entry point
def experiment_name(cfg: DictConfig) -> str:
    return cfg.experiment or f"{cfg.algo.name}-{cfg.env.name.replace('/', '-')}"


def train(
    cfg: DictConfig, *, run_dir: Path | str | None = None, stop_after_chunks: int | None = None
) -> Path:
    """Train from a validated config (or resume ``cfg.resume``); returns the run directory.

    ``run_dir`` puts a new run in that directory (a sweep's job directory) instead of a new
    ``<logger.root>/<experiment>/<run-id>``. ``stop_after_chunks`` ends the run early after
    that many chunks (tests of resume).
    """
    from marl.checkpoint import Checkpointer
    from marl.runlog import RunLogger, new_run_dir

    resume_dir = Path(cfg.resume) if cfg.resume else None
    multi_process = jax.process_count() > 1
    if resume_dir is not None:
        if not (resume_dir / "config.yaml").is_file():
            raise ConfigError(f"resume={resume_dir}: not a run directory (no config.yaml)")
        saved = OmegaConf.load(resume_dir / "config.yaml")
        saved.resume = str(resume_dir)
        cfg = validate(saved)
        run_dir = resume_dir
    elif jax.process_index() == 0:
        Schedule.of(cfg)  # config errors end the run before it makes a directory
        _check_minibatches(cfg)
        if cfg.env.kind == "jax":
            from marl.envs.registry import check_kwargs

            check_kwargs(str(cfg.env.name), dict(cfg.env.kwargs))
        if run_dir is None:
            run_dir = new_run_dir(Path(cfg.logger.root), experiment_name(cfg))
        else:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
    else:  # other processes of a multi-process run: process 0's directory (below)
        run_dir = None
    if multi_process:  # one run directory, process 0's; only process 0 logs
        run_dir = Path(broadcast_text(str(run_dir) if jax.process_index() == 0 else ""))
    try:
        trainer = Trainer(cfg, run_dir)
    except ConfigError:
        # a config only the built environment or policy can reject (algo=mra on an
        # environment without entities): leave no empty run directory behind
        if resume_dir is None and run_dir is not None and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise
    sched = trainer.sched
    # every process takes part in each save (orbax synchronises them; process 0 writes)
    ckpt = Checkpointer(run_dir / "checkpoints", max_to_keep=cfg.checkpoint.max_to_keep)
    runner = trainer.init_runner()
    best = {"params": runner.train.params, "score": np.full((trainer.S,), -np.inf, np.float32)}
    start, evals_done = 0, 0
    if resume_dir is not None and not ckpt.steps():
        # killed before its first checkpoint (a pre-empted cluster job): the same run again
        # from its saved config, in the same directory, its partial logs dropped
        print(
            f"resume={run_dir}: no checkpoint yet; starting the run again from its saved config",
            file=sys.stderr,
        )
    elif resume_dir is not None:
        template = {
            "runner": runner,
            "best_params": best["params"],
            "best_score": jnp.asarray(best["score"]),
        }
        if trainer.kind != "jax":  # the environments live in worker processes
            template["runner"] = runner._replace(ts=None)
        if multi_process:  # every process reads the whole state (run_chunk takes its share)
            state, meta = ckpt.restore(gather_to_host(template))
            if trainer.mesh is not None:
                shardings = trainer._shardings.train.params
                state["best_params"] = to_global(state["best_params"], shardings)
        else:
            state, meta = ckpt.restore(template)
        runner = state["runner"]
        if trainer.kind != "jax":
            runner = trainer.restart_host_envs(runner, int(meta["update"]))
        best = {"params": state["best_params"], "score": np.asarray(state["best_score"])}
        start, evals_done = int(meta["update"]), int(meta["evals"])
        print(f"resuming {run_dir} from update {start}/{sched.num_updates}", file=sys.stderr)
    wb = OmegaConf.to_container(cfg.logger.wandb, resolve=True)
    if not wb.get("group"):
        wb["group"] = experiment_name(cfg)
    # filterable in W&B: the algorithm and the environment of every run
    tags = [*(wb.get("tags") or []), f"algo={cfg.algo.name}", f"env={cfg.env.name}"]
    wb["tags"] = list(dict.fromkeys(tags))  # once each (a sweep's job or a resume has them)
    if jax.process_index() == 0:
        logger = RunLogger(
            run_dir,
            to_dict(cfg),
            trainer.S,
            wandb=wb,
            resume_update=start if resume_dir is not None else None,
        )
    else:
        logger = _NoLogger()
    progress = Progress(
        cfg.logger.progress,
        sched.num_updates * sched.steps_per_update,
        start * sched.steps_per_update,
    )
    last_ckpt, ret = None, None
    t_start = time.perf_counter()
    try:
        with progress:
            for i, (u0, n) in enumerate(sched.chunks(start)):
                t0 = time.perf_counter()
                new_runner, metrics = trainer.run_chunk(runner, n)
                check_finite(metrics, u0)
                runner = new_runner
                dt = time.perf_counter() - t0
                sps = n * sched.steps_per_update * trainer.S / dt
                update = u0 + n
                env_steps = update * sched.steps_per_update
                rows = train_rows(
                    metrics,
                    u0,
                    sched.steps_per_update,
                    trainer.spec.has_win,
                    sps,
                    time.perf_counter() - t_start,
                )
                logger.log_train(rows)
                ret, length, won = trainer.evaluate(
                    runner.train.params,
                    jax.random.fold_in(trainer.eval_key, evals_done),
                    cfg.eval.episodes,
                )
                evals_done += 1
                if trainer.kind != "jax":
                    # evaluation stepped the same worker copies: restart them, seeded by the
                    # update, as a resumed run does
                    runner = trainer.restart_host_envs(runner, update)
                erows = eval_rows(
                    ret, length, won, update, env_steps, trainer.spec.has_win, trainer.games(ret)
                )
                scalars, matrices = trainer.summaries(runner.train.params)
                for s, row in enumerate(erows):
                    row.update({k: float(v[s]) for k, v in scalars.items()})
                logger.log_eval(erows)
                if matrices:
                    logger.log_matrices(update, env_steps, matrices)
                score = ret.mean(1)
                better = score > best["score"]
                best["params"] = jax.tree.map(
                    lambda b, p, m=better: jnp.where(m.reshape(-1, *[1] * (p.ndim - 1)), p, b),
                    best["params"],
                    runner.train.params,
                )
                best["score"] = np.where(better, score, best["score"])
                last = rows[-trainer.S :]
                progress.update(
                    env_steps,
                    sps,
                    _mean([r["train/episode_return"] for r in last]),
                    float(score.mean()),
                )
                final_chunk = update >= sched.num_updates
                if final_chunk or evals_done % cfg.checkpoint.every_evals == 0:
                    state = {
                        "runner": runner if trainer.kind == "jax" else runner._replace(ts=None),
                        "best_params": best["params"],
                        "best_score": jnp.asarray(best["score"]),
                    }
                    last_ckpt = ckpt.save(
                        update,
                        gather_to_host(state) if multi_process else state,
                        {"update": update, "evals": evals_done, "env_steps": env_steps},
                    )
                if stop_after_chunks is not None and i + 1 >= stop_after_chunks:
                    return run_dir
        if ret is None:  # resumed after its last update: evaluate as its last evaluation did
            update, env_steps = start, start * sched.steps_per_update
            ret, length, won = trainer.evaluate(
                runner.train.params,
                jax.random.fold_in(trainer.eval_key, max(evals_done - 1, 0)),
                cfg.eval.episodes,
            )
        # the absolute metric: the best parameters over 10 x E episodes
        n_abs = cfg.eval.episodes * cfg.eval.absolute_factor
        a_ret, _, a_won = trainer.evaluate(
            best["params"], jax.random.fold_in(trainer.eval_key, 10**6), n_abs
        )
        final_eval = eval_rows(
            ret, length, won, update, env_steps, trainer.spec.has_win, trainer.games(ret)
        )
        final = {
            "absolute": [
                {
                    "seed": s,
                    "eval/episode_return": float(a_ret[s].mean()),
                    "eval/episode_return_std": float(a_ret[s].std()),
                    "eval/win_rate": float(a_won[s].mean()) if trainer.spec.has_win else None,
                    "episodes": n_abs,
                    **{
                        f"eval/{g}/episode_return": float(a_ret[s, idx].mean())
                        for g, idx in trainer.games(a_ret).items()
                    },
                }
                for s in range(trainer.S)
            ],
            "final": final_eval,
            "env_steps": env_steps,
            "updates": update,
        }
        logger.write_final(final)
        if cfg.eval.video and jax.process_index() == 0 and not multi_process:
            _final_video(trainer, best["params"], logger, env_steps)
        from marl.compare import to_marl_eval_json

        if jax.process_index() == 0:
            logger.write_json("marl_eval.json", to_marl_eval_json(run_dir))
        logger.plot()
        if last_ckpt is not None:
            logger.log_artifact(Path(last_ckpt), name=f"{experiment_name(cfg)}-checkpoint")
        _summary(final, trainer.spec.has_win)
    except KeyboardInterrupt:
        print(f"interrupted; continue with: marl train resume={run_dir}", file=sys.stderr)
        raise
    finally:  # also on errors: W&B runs finish, the last good checkpoint stays
        logger.close()
        ckpt.close()
    return run_dir


def _final_video(trainer: Trainer, params: Any, logger: Any, env_steps: int) -> None:
    """One greedy episode of seed 0's best parameters as ``videos/final.gif``, logged to W&B;
    environments that cannot be drawn are skipped, and a drawing failure only warns."""
    from marl.render import can_render, render_episodes

    if not can_render(trainer.cfg):
        return
    out = trainer.run_dir / "videos" / "final.gif"
    try:
        seed0 = jax.tree.map(lambda x: x[0], params)
        render_episodes(trainer, seed0, out, seed=int(trainer.cfg.seed))
    except Exception as err:  # a video never fails a finished run
        print(f"final video not drawn: {type(err).__name__}: {err}", file=sys.stderr)
        return
    logger.log_video(out, env_steps)


class _NoLogger:
    """The logger of the non-primary processes of a multi-process run."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else float("nan")


def _summary(final: dict, has_win: bool) -> None:
    f = np.array([r["eval/episode_return"] for r in final["final"]])
    a = np.array([r["eval/episode_return"] for r in final["absolute"]])
    line = (
        f"final eval/episode_return {f.mean():.3f} (over seeds: {np.round(f, 3).tolist()}); "
        f"absolute {a.mean():.3f}"
    )
    if has_win:
        w = np.array([r["eval/win_rate"] for r in final["final"]])
        line += f"; eval/win_rate {w.mean():.3f}"
    print(line)


class Progress:
    """A progress bar with a line of figures and the ETA on a terminal; silent otherwise
    (training: steps, SPS, returns; ``marl search``: games)."""

    def __init__(self, enabled: bool, total: int, done: int, label: str = "train"):
        from rich.console import Console

        self.enabled = enabled and Console(stderr=True).is_terminal
        self.total, self.done = total, done
        self.label = label
        self._p = None

    def __enter__(self):
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn(self.label),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task(
                self.label, total=self.total, completed=self.done, info="compiling..."
            )
        return self

    def update(self, steps: int, sps: float, ret: float, eval_ret: float) -> None:
        self.show(steps, f"sps {sps:,.0f} return {ret:.2f} eval {eval_ret:.2f}")

    def show(self, completed: int, info: str) -> None:
        if self._p is not None:
            self._p.update(self._task, completed=completed, info=info)

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)
