"""Speed benchmarks: environment stepping, training throughput, scaling and compile times.

    python scripts/bench.py                   # the full measurement (about 10 minutes on 2 cores)
    python scripts/bench.py --quick           # every section with tiny sizes (smoke test)
    python scripts/bench.py --only env,train  # some sections
    python scripts/bench.py --jaxmarl-repo /tmp/jaxmarl   # + JaxMARL's own IPPO as reference

Sections (``--only``): ``env`` (pure-JAX stepping: JaxMARL's dict API against the array view),
``pz`` (mpe2 through PettingZoo: plain loop, bridge sync/async, jitted policy in the loop),
``train`` (PPO updates per second through :class:`marl.trainer.Trainer`), ``jaxmarl`` (JaxMARL's
``baselines/IPPO/ippo_ff_mpe.py`` train function, imported from a checkout given by
``--jaxmarl-repo``), ``scaling`` (number of envs, number of vmapped seeds) and ``compile``
(first launch with an empty persistent compilation cache and a second, cached launch, each in
a fresh process).

Every throughput is the median over ``--repeats`` (>= 3) timed repeats after a warm-up call;
compile time is reported apart (the first call, or ``lower().compile()`` where it can be split
off). Results: a rich table on stdout and JSON (``--out``) with the machine description.
``main(argv)`` is the entry point of both ``scripts/bench.py`` and ``marl bench``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = (
    "env",
    "pz",
    "train",
    "jaxmarl",
    "scaling",
    "compile",
    "target",
    "search",
    "relaunch",
    "attack",
)
ENV_NAMES = ("mpe/simple_spread", "smax/3m")

#: Targets: key -> (description, comparison, threshold, unit).
TARGETS: dict[str, tuple[str, str, float, str]] = {
    "ippo_vs_jaxmarl": (
        "training throughput, JaxMARL's IPPO config vs JaxMARL's IPPO baseline",
        ">=",
        1.5,
        "x",
    ),
    "first_compile": ("first compile of default training (to first update)", "<", 10.0, "s"),
    "cached_launch": ("cached second launch to first update", "<", 3.0, "s"),
    "array_view": ("array view vs raw JaxMARL stepping (worst size)", ">=", 0.95, "x"),
    "bridge_2_workers": (
        "bridge with 2 worker processes vs the bridge in-process (same copies)",
        ">=",
        1.6,
        "x",
    ),
    "policy_in_loop": ("jitted policy in the loop vs random-action stepping", ">=", 0.8, "x"),
    "mat_vs_mappo": ("MAT training steps/s vs MAPPO's, smax/3m, same batch", ">=", 0.5, "x"),
    "commformer_vs_mappo": (
        "CommFormer training steps/s vs MAPPO's, smax/3m, same batch",
        ">=",
        0.5,
        "x",
    ),
    "search_vs_openspiel": (
        "MD search decisions/s, pure JAX vs a Python loop of OpenSpiel clones (hanabi/small)",
        ">=",
        2.0,
        "x",
    ),
    "relaunch_first": ("`marl train` whole process, empty compile cache", "<=", 15.0, "s"),
    "relaunch_cached": ("`marl train` whole process, cached relaunch", "<=", 6.0, "s"),
    "relaunch_vs_jaxmarl": (
        "cached `marl train` wall time vs JaxMARL's ippo_ff_mpe.py, same tiny budget",
        "<=",
        1 / 3,
        "x",
    ),
    "seeds_8_vs_1": ("wall time of 8 vmapped seeds vs 1, same steps per seed", "<=", 4.0, "x"),
    "time_to_target": (
        "default MAPPO time to -19.8 vs JaxMARL IPPO's (mpe/simple_spread)",
        "<=",
        0.5,
        "x",
    ),
}

#: The learning target of the training issue: smoothed per-agent training return.
LEARNING_TARGET = -19.8
TARGET_SMOOTH = 10  # updates in the moving average


@dataclass(frozen=True)
class Settings:
    """Sizes of one benchmark run (``quick`` or full)."""

    quick: bool
    repeats: int
    env_sizes: tuple[int, ...]
    env_target_steps: dict[str, int]
    env_max_scan: int
    pz_sizes: tuple[int, ...]
    pz_steps: int
    train_target_steps: int
    pz_train_updates: int
    scaling_envs: tuple[int, ...]
    seeds: tuple[int, ...]
    seeds_updates: int
    jaxmarl_timesteps: int
    jaxmarl_repeats: int
    target_jaxmarl_timesteps: int
    target_overrides: tuple[str, ...]

    @staticmethod
    def make(quick: bool, repeats: int | None = None) -> Settings:
        if quick:
            return Settings(
                quick=True,
                repeats=max(3, repeats or 3),
                env_sizes=(16,),
                env_target_steps={"mpe/simple_spread": 1024, "smax/3m": 512},
                env_max_scan=64,
                pz_sizes=(8,),
                pz_steps=30,
                train_target_steps=2 * 16 * 128,
                pz_train_updates=1,
                scaling_envs=(8,),
                seeds=(1, 2),
                seeds_updates=32,  # = the 8-env row's updates: its measurement is reused
                jaxmarl_timesteps=2 * 16 * 128,
                jaxmarl_repeats=3,
                target_jaxmarl_timesteps=4 * 16 * 128,
                target_overrides=("num_envs=8", "algo.rollout_len=16", "total_timesteps=1024"),
            )
        return Settings(
            quick=False,
            repeats=max(3, repeats or 3),
            env_sizes=(1, 16, 256, 1024, 4096),
            env_target_steps={"mpe/simple_spread": 262_144, "smax/3m": 65_536},
            env_max_scan=2000,
            pz_sizes=(8, 16),
            pz_steps=300,
            train_target_steps=100_000,
            pz_train_updates=2,
            scaling_envs=(16, 64, 256),
            seeds=(1, 4, 8),
            seeds_updates=4,
            jaxmarl_timesteps=1_000_000,
            jaxmarl_repeats=3,
            target_jaxmarl_timesteps=10_000_000,
            target_overrides=(),
        )


# ------------------------------------------------------------------------------------ helpers
def _now() -> float:
    return time.perf_counter()


def _block(x: Any) -> Any:
    import jax

    return jax.block_until_ready(x)


def _median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(pkg: str) -> str | None:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, JAX backend and library versions."""
    import jax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count()
    cache = jax.config.jax_compilation_cache_dir
    return {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_usable": usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "versions": {
            p: _version(p)
            for p in ("jax", "jaxlib", "jaxmarl", "flax", "optax", "pettingzoo", "mpe2", "numpy")
        },
        "persistent_compile_cache": cache or None,
        "load_avg_start": list(os.getloadavg()),
    }


def machine_line(m: dict[str, Any]) -> str:
    v = m["versions"]
    return (
        f"{m['cpu_model']}, {m['cpu_usable']} cores, JAX {v['jax']} (jaxlib {v['jaxlib']}, "
        f"backend {m['jax_backend']}), jaxmarl {v['jaxmarl']}, flax {v['flax']}, "
        f"Python {m['python']}"
    )


def _timed_repeats(fn: Callable[[int], Any], repeats: int) -> list[float]:
    """Seconds of ``fn(i)`` for ``i < repeats`` (``fn`` blocks until its result is ready)."""
    out = []
    for i in range(repeats):
        t0 = _now()
        fn(i)
        out.append(_now() - t0)
    return out


# ---------------------------------------------------------------------- 1. pure-JAX stepping
def _raw_runner(env: Any, n: int, T: int):
    """jit(lax.scan over jax.vmap(env.step)) with uniform random actions, JaxMARL's dict API
    and its own auto-reset; outputs are reduced into the carry so XLA cannot drop them."""
    import jax
    import jax.numpy as jnp

    agents = tuple(env.agents)
    sizes = [int(env.action_space(a).n) for a in agents]

    def body(carry, key):
        state, acc = carry
        k_act, k_step = jax.random.split(key)
        ka = jax.random.split(k_act, len(agents))
        actions = {a: jax.random.randint(ka[i], (n,), 0, sizes[i]) for i, a in enumerate(agents)}
        obs, state, reward, dones, _ = jax.vmap(env.step)(
            jax.random.split(k_step, n), state, actions
        )
        acc = acc + sum(jnp.sum(o) for o in jax.tree.leaves(obs))
        acc = acc + sum(jnp.sum(reward[a]) for a in agents) + jnp.sum(dones["__all__"])
        return (state, acc), None

    def run(state, key):
        (state, acc), _ = jax.lax.scan(body, (state, jnp.float32(0)), jax.random.split(key, T))
        return state, acc

    def init(key):
        return jax.vmap(env.reset)(jax.random.split(key, n))[1]

    return jax.jit(run), jax.jit(init)


def _view_runner(view: Any, n: int, T: int, randint: bool = False):
    """The same scan over the array view: ``step_batch`` with ``random_actions`` (or, with
    ``randint``, uniform actions that ignore ``avail_actions``, as the raw loop draws them)."""
    import jax
    import jax.numpy as jnp

    nA = view.spec.num_actions

    def body(carry, key):
        state, ts, acc = carry
        k_act, k_step = jax.random.split(key)
        if randint:
            actions = jax.random.randint(k_act, ts.avail_actions.shape[:-1], 0, nA)
        else:
            actions = view.random_actions(k_act, ts.avail_actions)
        state, ts = view.step_batch(k_step, state, actions)
        acc = acc + jnp.sum(ts.obs) + jnp.sum(ts.state) + jnp.sum(ts.reward)
        acc = acc + jnp.sum(ts.episode_done)
        return (state, ts, acc), None

    def run(carry, key):
        state, ts = carry
        (state, ts, acc), _ = jax.lax.scan(
            body, (state, ts, jnp.float32(0)), jax.random.split(key, T)
        )
        return (state, ts), acc

    def init(key):
        return view.reset_batch(key, n)

    return jax.jit(run), jax.jit(init)


def _measure_scan(run, init, T: int, n: int, repeats: int) -> dict[str, Any]:
    import jax

    key = jax.random.PRNGKey(0)
    carry = _block(init(key))
    t0 = _now()
    compiled = run.lower(carry, key).compile()
    compile_s = _now() - t0
    _block(compiled(carry, jax.random.PRNGKey(1)))  # warm-up
    keys = [jax.random.PRNGKey(2 + i) for i in range(repeats)]
    times = _timed_repeats(lambda i: _block(compiled(carry, keys[i])), repeats)
    med = _median(times)
    return {
        "compile_s": compile_s,
        "times_s": times,
        "steps": n * T,
        "steps_per_s": n * T / med,
    }


def bench_env(s: Settings, names: Sequence[str] = ENV_NAMES) -> list[dict[str, Any]]:
    """Steps/s (copies x steps) of raw JaxMARL stepping and of the array view."""
    from marl import envs

    rows = []
    for name in names:
        view = envs.make_array_env(name)
        for n in s.env_sizes:
            target = s.env_target_steps.get(name, s.env_target_steps["smax/3m"])
            T = max(8, min(s.env_max_scan, target // n))
            raw = _measure_scan(*_raw_runner(view.env, n, T), T, n, s.repeats)
            ours = _measure_scan(*_view_runner(view, n, T), T, n, s.repeats)
            ratio = ours["steps_per_s"] / raw["steps_per_s"]
            row = {"env": name, "num_envs": n, "scan_len": T, "raw": raw, "ours": ours}
            row["ratio"] = ratio
            if not s.quick:
                # diagnostic: the array view with the raw loop's action sampler (randint,
                # ignoring avail_actions), to split the sampler's cost from the view's
                diag = _measure_scan(*_view_runner(view, n, T, randint=True), T, n, s.repeats)
                row["ours_randint"] = diag
                row["ratio_randint"] = diag["steps_per_s"] / raw["steps_per_s"]
            rows.append(row)
            _log(
                f"env {name} x{n}: raw {raw['steps_per_s']:,.0f}/s, ours "
                f"{ours['steps_per_s']:,.0f}/s ({ratio:.2f}x)"
            )
    return rows


# ------------------------------------------------------------------- 1b. PettingZoo stepping
def _mpe2_factory():
    from mpe2 import simple_spread_v3

    return simple_spread_v3.parallel_env(max_cycles=25)


def _plain_loop(E: int, steps: int, repeats: int) -> dict[str, Any]:
    """mpe2 in a plain Python loop over ``E`` envs; a reset (when ``env.agents`` is empty)
    is not a step: only ``env.step`` calls count."""
    rng = np.random.default_rng(0)
    envs_ = [_mpe2_factory() for _ in range(E)]
    for i, e in enumerate(envs_):
        e.reset(seed=i)
    agents = list(envs_[0].possible_agents)
    nA = int(envs_[0].action_space(agents[0]).n)
    counts: list[int] = []
    resets: list[int] = []

    def block(_i: int) -> None:
        real, rs = 0, 0
        for _ in range(steps):
            acts = rng.integers(0, nA, size=(E, len(agents)))
            for i, e in enumerate(envs_):
                if not e.agents:
                    e.reset()
                    rs += 1
                e.step({a: int(acts[i, j]) for j, a in enumerate(e.agents)})
                real += 1
        counts.append(real)
        resets.append(rs)

    block(-1)  # warm-up
    counts.clear()
    resets.clear()
    times = _timed_repeats(block, repeats)
    sps = [c / t for c, t in zip(counts, times, strict=True)]
    for e in envs_:
        e.close()
    return {
        "times_s": times,
        "steps": counts[0],
        "resets": resets[0],
        "steps_per_s": _median(sps),
    }


def _bridge(E: int, steps: int, repeats: int, mode: str, workers: int | None) -> dict[str, Any]:
    from marl.envs.pettingzoo_vector import pettingzoo_vector_env

    rng = np.random.default_rng(0)
    kw = {"num_workers": workers} if mode == "async" else {}
    with pettingzoo_vector_env(_mpe2_factory, E, mode=mode, **kw) as venv:
        A, nA = venv.spec.num_agents, venv.spec.num_actions
        venv.reset(seed=0)

        def block(_i: int) -> None:
            for _ in range(steps):
                venv.step(rng.integers(0, nA, size=(E, A)))

        block(-1)
        times = _timed_repeats(block, repeats)
        nw = venv.num_workers
    return {
        "times_s": times,
        "steps": E * steps,
        "workers": nw,
        "steps_per_s": E * steps / _median(times),
    }


def _policy_in_loop(E: int, steps: int, repeats: int, workers: int) -> dict[str, Any]:
    """MAPPO's jitted ``act`` (through :class:`HostRollout`) stepping the async bridge, and
    random-action stepping of the same bridge."""
    import jax
    import jax.numpy as jnp

    from marl.agents import make_policy
    from marl.config import compose
    from marl.envs.pettingzoo_vector import pettingzoo_vector_env
    from marl.rollout import HostRollout

    cfg = compose(["env=pz/mpe2_simple_spread", "algo=mappo", f"num_envs={E}"])
    rng = np.random.default_rng(0)
    with pettingzoo_vector_env(_mpe2_factory, E, mode="async", num_workers=workers) as venv:
        policy = make_policy(cfg.algo, venv.spec, 10)
        host = HostRollout(venv, policy, 1, E)
        params = jax.tree.map(lambda x: x[None], policy.init(jax.random.PRNGKey(0)))
        hidden = jax.tree.map(lambda x: x[None], policy.initial_hidden(E))
        first = jnp.ones((1, E), bool)
        ts = host.reset(seed=0)
        state = {"ts": ts, "hidden": hidden, "first": first}

        def roll(i: int) -> None:
            out = host.rollout(
                params,
                state["ts"],
                state["hidden"],
                state["first"],
                jax.random.PRNGKey(i),
                steps,
                jnp.zeros((1,), jnp.int32),
            )
            _block(out[3])
            state["ts"], state["hidden"], state["first"] = out[0], out[1], out[2]

        t0 = _now()
        roll(-1)  # compiles act
        first_s = _now() - t0
        pol_times = _timed_repeats(roll, repeats)
        A, nA = venv.spec.num_agents, venv.spec.num_actions

        def rand(_i: int) -> None:
            for _ in range(steps):
                venv.step(rng.integers(0, nA, size=(E, A)))

        rand(-1)
        rand_times = _timed_repeats(rand, repeats)
    pol = E * steps / _median(pol_times)
    rnd = E * steps / _median(rand_times)
    return {
        "workers": workers,
        "policy": {"times_s": pol_times, "steps_per_s": pol, "first_call_s": first_s},
        "random": {"times_s": rand_times, "steps_per_s": rnd},
        "ratio": pol / rnd,
    }


def bench_pz(s: Settings) -> list[dict[str, Any]]:
    rows = []
    for E in s.pz_sizes:
        plain = _plain_loop(E, s.pz_steps, s.repeats)
        sync = _bridge(E, s.pz_steps, s.repeats, "sync", None)
        async2 = _bridge(E, s.pz_steps, s.repeats, "async", 2)
        pol = _policy_in_loop(E, s.pz_steps, s.repeats, 2)
        row = {
            "num_envs": E,
            "plain_loop": plain,
            "bridge_sync": sync,
            "bridge_async_2": async2,
            "policy_in_loop": pol,
            "ratio_async2_vs_plain": async2["steps_per_s"] / plain["steps_per_s"],
            "ratio_async2_vs_sync": async2["steps_per_s"] / sync["steps_per_s"],
            "ratio_sync_vs_plain": sync["steps_per_s"] / plain["steps_per_s"],
        }
        rows.append(row)
        _log(
            f"pz x{E}: plain {plain['steps_per_s']:,.0f}/s, sync {sync['steps_per_s']:,.0f}/s, "
            f"async2 {async2['steps_per_s']:,.0f}/s, policy {pol['policy']['steps_per_s']:,.0f}"
            f"/s vs random {pol['random']['steps_per_s']:,.0f}/s"
        )
    return rows


# --------------------------------------------------------------------- 2. training throughput
def train_configs(s: Settings) -> list[tuple[str, list[str]]]:
    """(label, overrides) of the training-throughput rows."""
    rows = [
        ("ippo mpe jaxmarl-config", ["preset=jaxmarl_ippo_mpe"]),
        ("mappo mpe jaxmarl-config", ["preset=jaxmarl_ippo_mpe", "algo=mappo"]),
        ("ippo mpe defaults", ["env=mpe/simple_spread", "algo=ippo"]),
        ("mappo mpe defaults", ["env=mpe/simple_spread", "algo=mappo"]),
        ("ippo smax/3m defaults", ["env=smax/3m", "algo=ippo"]),
        ("mappo smax/3m defaults", ["env=smax/3m", "algo=mappo"]),
        # the transformers on MAPPO's batch (64 envs x 128 steps), each with its own epochs
        ("mat smax/3m", ["env=smax/3m", "algo=mat", "num_envs=64", "algo.rollout_len=128"]),
        (
            "commformer smax/3m",
            ["env=smax/3m", "algo=commformer", "num_envs=64", "algo.rollout_len=128"],
        ),
        ("mappo pz/mpe2 (bridge)", ["env=pz/mpe2_simple_spread", "algo=mappo"]),
    ]
    if s.quick:  # tiny rollouts: smoke test of the machinery, not a measurement
        small = ["num_envs=8", "algo.rollout_len=16"]
        keep = ("ippo mpe jaxmarl-config", "mappo pz/mpe2 (bridge)")
        rows = [(k, v + small) for k, v in rows if k in keep]
    return rows


_MEASURED: dict[tuple[Any, ...], dict[str, Any]] = {}


def measure_training(
    overrides: Sequence[str], updates: int, repeats: int, label: str = ""
) -> dict[str, Any]:
    """Env steps/s of ``Trainer.run_chunk`` over ``updates`` updates (all seeds), median
    over ``repeats`` chunks after a first chunk that compiles (its time reported apart).
    The same (overrides, updates, repeats) within one process is measured once."""
    key = (tuple(overrides), updates, repeats)
    if key not in _MEASURED:
        _MEASURED[key] = _measure_training(overrides, updates, repeats, label)
    return dict(_MEASURED[key])


def _measure_training(
    overrides: Sequence[str], updates: int, repeats: int, label: str
) -> dict[str, Any]:
    from marl.config import compose
    from marl.trainer import Trainer

    base = ["logger.wandb.mode=disabled", "logger.progress=false", "eval.num_evals=1"]
    cfg = compose([*overrides, *base])
    per = cfg.num_envs * cfg.algo.rollout_len
    cfg = compose([*overrides, *base, f"total_timesteps={per * updates}"])
    t0 = _now()
    trainer = Trainer(cfg, None)
    runner = _block(trainer.init_runner())
    setup_s = _now() - t0
    t0 = _now()
    runner, _ = trainer.run_chunk(runner, updates)
    first_s = _now() - t0
    state = {"runner": runner}

    def chunk(_i: int) -> None:
        state["runner"], m = trainer.run_chunk(state["runner"], updates)
        if not np.isfinite(m["loss/total"]).all():
            raise RuntimeError(f"{label}: non-finite loss during the benchmark")

    times = _timed_repeats(chunk, repeats)
    if trainer.kind != "jax":
        trainer.env.close()
    med = _median(times)
    steps = updates * per * trainer.S
    return {
        "overrides": list(overrides),
        "num_envs": int(cfg.num_envs),
        "rollout_len": int(cfg.algo.rollout_len),
        "num_seeds": int(cfg.num_seeds),
        "updates_per_chunk": updates,
        "steps_per_chunk": steps,
        "setup_s": setup_s,
        "first_chunk_s": first_s,
        "compile_s": max(first_s - med, 0.0),
        "times_s": times,
        "steps_per_s": steps / med,
    }


def _updates_for(overrides: Sequence[str], target: int, pz_updates: int) -> int:
    from marl.config import compose

    cfg = compose(list(overrides))
    if cfg.env.kind != "jax":
        return pz_updates
    return max(2, round(target / (cfg.num_envs * cfg.algo.rollout_len)))


def bench_train(s: Settings) -> list[dict[str, Any]]:
    rows = []
    for label, ov in train_configs(s):
        n = _updates_for(ov, s.train_target_steps, s.pz_train_updates)
        r = measure_training(ov, n, s.repeats, label)
        r["label"] = label
        rows.append(r)
        _log(
            f"train {label}: {r['steps_per_s']:,.0f} steps/s (first chunk {r['first_chunk_s']:.1f}"
            f" s, {n} updates/chunk)"
        )
    return rows


# ------------------------------------------------------------------ 2b. attacks
ATTACK_TASK = ["env=smax/marines", "env.kwargs.N=4", "env.kwargs.M=3", "algo=mappo"]


def bench_attack(s: Settings) -> dict[str, Any]:
    """Training steps/s of the attacks (``marl attack``'s training config: one adversary
    against a frozen MAPPO team of 4 marines vs 3, the team's policy in every step) next to
    plain MAPPO training of the whole team on the same task and batch. The victims are a
    few updates of MAPPO (the timing does not depend on their weights)."""
    from marl.attack import plan_attack
    from marl.config import compose
    from marl.trainer import train

    batch = ["num_envs=8", "algo.rollout_len=16"] if s.quick else ["num_envs=64"]
    quiet = ["logger.wandb.mode=disabled", "logger.progress=false", "eval.video=false"]
    with tempfile.TemporaryDirectory() as tmp:
        victims = train(
            compose(
                [
                    *ATTACK_TASK,
                    "num_envs=8",
                    "algo.rollout_len=16",
                    "total_timesteps=256",
                    "eval.num_evals=1",
                    "eval.episodes=2",
                    "eval.absolute_factor=1",
                    *quiet,
                    f"logger.root={tmp}",
                ]
            )
        )
        rows = []
        for label, extra in (
            ("mappo team (4m vs 3m)", ATTACK_TASK),
            ("attack gleave", None),
            ("attack ami", None),
        ):
            if extra is None:
                name = label.split()[-1]
                plan = plan_attack([f"victims={victims}", f"attack={name}", *batch])
                ov = plan.overrides
            else:
                ov = [*extra, *batch]
            n = _updates_for(ov, s.train_target_steps, s.pz_train_updates)
            r = measure_training(ov, n, s.repeats, label)
            r["label"] = label
            rows.append(r)
            _log(f"attack bench {label}: {r['steps_per_s']:,.0f} steps/s")
    base = rows[0]["steps_per_s"]
    for r in rows:
        r["ratio_vs_mappo"] = r["steps_per_s"] / base
    return {"task": "smax/marines N=4 M=3", "rows": rows}


# ------------------------------------------------------------------ 3. JaxMARL's own baseline
def load_jaxmarl_ippo(repo: Path) -> tuple[Any, dict[str, Any]]:
    """Import ``baselines/IPPO/ippo_ff_mpe.py`` from a JaxMARL checkout (by file path: the
    installed ``jaxmarl`` package is the one it uses) and read its published config."""
    import yaml

    script = repo / "baselines" / "IPPO" / "ippo_ff_mpe.py"
    conf = repo / "baselines" / "IPPO" / "config" / "ippo_ff_mpe.yaml"
    if not script.is_file() or not conf.is_file():
        raise FileNotFoundError(f"{repo}: no baselines/IPPO/ippo_ff_mpe.py (+ config)")
    spec = importlib.util.spec_from_file_location("_jaxmarl_ippo_ff_mpe", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)

    class _NoWandb:  # their update loop logs every update through io_callback(wandb.log)
        @staticmethod
        def log(*_a: Any, **_k: Any) -> None:
            return None

    mod.wandb = _NoWandb()
    config = yaml.safe_load(conf.read_text())
    return mod, config


def bench_jaxmarl(repo: Path, s: Settings) -> dict[str, Any]:
    """Their ``make_train(config)`` for ``s.jaxmarl_timesteps`` steps, one seed: compile
    (``lower().compile()``) and steady-state steps/s (median over repeats)."""
    import jax

    mod, config = load_jaxmarl_ippo(repo)
    config = dict(config)
    config["TOTAL_TIMESTEPS"] = s.jaxmarl_timesteps
    train = jax.jit(mod.make_train(config))  # make_train fills NUM_UPDATES etc. in config
    steps = config["NUM_UPDATES"] * config["NUM_STEPS"] * config["NUM_ENVS"]
    rng = jax.random.PRNGKey(int(config["SEED"]))
    t0 = _now()
    compiled = train.lower(rng).compile()
    compile_s = _now() - t0
    times = _timed_repeats(
        lambda i: _block(compiled(jax.random.fold_in(rng, i))), s.jaxmarl_repeats
    )
    return {
        "repo": str(repo),
        "script": "baselines/IPPO/ippo_ff_mpe.py",
        "commit": _git_head(repo) or os.environ.get("JAXMARL_COMMIT"),
        "config": {k: config[k] for k in sorted(config) if k.isupper()},
        "num_updates": int(config["NUM_UPDATES"]),
        "steps": int(steps),
        "compile_s": compile_s,
        "times_s": times,
        "steps_per_s": steps / _median(times),
    }


def _git_head(repo: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True
        )
        return out.stdout.strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------------------- 4. scaling
def first_reach(
    values: Sequence[float], seconds: Sequence[float], target: float, smooth: int
) -> dict[str, Any]:
    """Where the ``smooth``-update moving average of ``values`` first reaches ``target``:
    ``{"update", "seconds"}`` (``None`` if never), and the last smoothed value."""
    v = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf)
    if len(v) < smooth:
        return {"update": None, "seconds": None, "final_smoothed": None}
    sm = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
    hit = np.flatnonzero(sm >= target)
    i = int(hit[0]) + smooth - 1 if len(hit) else None
    return {
        "update": None if i is None else i + 1,
        "seconds": None if i is None else float(seconds[i]),
        "final_smoothed": float(sm[-1]),
    }


def _ours_to_target(s: Settings, preset: Sequence[str] = ()) -> dict[str, Any]:
    """``marl train`` with the defaults (MAPPO, 1 seed) or ``preset``, in this process: wall
    seconds from the start of ``train`` (set-up, compile and evaluations included) to the
    update where the smoothed training return reaches the target. An upper bound: the time
    before the training loop is taken as ``train``'s wall time minus the loop's, so the work
    after the last update (the final evaluation) is counted too."""
    from marl.config import compose
    from marl.runlog import METRICS_FILE, read_jsonl
    from marl.trainer import train

    with tempfile.TemporaryDirectory(prefix="marl-bench-target-") as root:
        ov = [
            *preset,
            *s.target_overrides,
            f"logger.root={root}",
            "logger.wandb.mode=disabled",
            "logger.progress=false",
        ]
        cfg = compose(ov)
        t0 = _now()
        run_dir = train(cfg)
        wall = _now() - t0
        rows = [r for r in read_jsonl(Path(run_dir) / METRICS_FILE) if r["seed"] == 0]
    rows.sort(key=lambda r: r["update"])
    ret = [np.nan if r["train/episode_return"] is None else r["train/episode_return"] for r in rows]
    # perf/elapsed_s counts from the training loop's start; add everything outside the loop
    setup = wall - rows[-1]["perf/elapsed_s"] if rows else 0.0
    hit = first_reach(ret, [r["perf/elapsed_s"] for r in rows], LEARNING_TARGET, TARGET_SMOOTH)
    if hit["seconds"] is not None:
        hit["seconds"] += max(setup, 0.0)
    return {
        "overrides": [*preset, *s.target_overrides],
        "total_timesteps": int(cfg.total_timesteps),
        "steps_per_update": int(cfg.num_envs * cfg.algo.rollout_len),
        "wall_s": wall,
        "env_steps_at_target": None
        if hit["update"] is None
        else hit["update"] * int(cfg.num_envs * cfg.algo.rollout_len),
        **hit,
    }


def _jaxmarl_to_target(repo: Path, s: Settings) -> dict[str, Any]:
    """JaxMARL's IPPO (their published MPE config, ``TOTAL_TIMESTEPS`` = 10M): seconds from
    the start of the compiled run (compile timed apart) to the update where their logged
    ``returned_episode_returns`` (smoothed the same way) reaches the target. Their
    ``MPELogWrapper`` logs returns times the number of agents; they are divided back to the
    per-agent return of the target."""
    import jax
    import jaxmarl

    mod, config = load_jaxmarl_ippo(repo)
    config = dict(config)
    config["TOTAL_TIMESTEPS"] = s.target_jaxmarl_timesteps
    n_agents = jaxmarl.make(config["ENV_NAME"], **config.get("ENV_KWARGS", {})).num_agents
    log: list[tuple[float, float]] = []

    class _Recorder:  # their per-update io_callback(wandb.log): keep time and return
        @staticmethod
        def log(metric: dict[str, Any], *_a: Any, **_k: Any) -> None:
            ret = float(np.mean(metric["returned_episode_returns"])) / n_agents
            log.append((_now(), ret))

    mod.wandb = _Recorder()
    train = jax.jit(mod.make_train(config))
    rng = jax.random.PRNGKey(int(config["SEED"]))
    t0 = _now()
    compiled = train.lower(rng).compile()
    compile_s = _now() - t0
    t0 = _now()
    _block(compiled(rng))
    wall = _now() - t0
    steps_per_update = int(config["NUM_STEPS"] * config["NUM_ENVS"])
    hit = first_reach([v for _, v in log], [t - t0 for t, _ in log], LEARNING_TARGET, TARGET_SMOOTH)
    return {
        "total_timesteps": int(config["NUM_UPDATES"]) * steps_per_update,
        "steps_per_update": steps_per_update,
        "compile_s": compile_s,
        "wall_s": wall,
        "env_steps_at_target": None if hit["update"] is None else hit["update"] * steps_per_update,
        **hit,
    }


def bench_target(s: Settings, repo: str | None) -> dict[str, Any]:
    """3. Wall time to the learning target: our defaults vs JaxMARL's IPPO configuration.
    Without a JaxMARL checkout, JaxMARL's time is the end of its 10M-step run at the
    throughput of this run's ``jaxmarl`` section (the issue's premise: it reaches the target
    only at its end), and the JSON says so."""
    out: dict[str, Any] = {"target": LEARNING_TARGET, "smooth": TARGET_SMOOTH}
    out["ours"] = _ours_to_target(s)
    _log(f"target: ours {out['ours']['seconds']} s (update {out['ours']['update']})")
    # like for like: JaxMARL's IPPO numbers in our trainer (our env, episode length, metric)
    out["ours_jaxmarl_config"] = _ours_to_target(s, ["preset=jaxmarl_ippo_mpe"])
    r = out["ours_jaxmarl_config"]
    _log(f"target: jaxmarl config in marl {r['seconds']} s (update {r['update']})")
    if repo:
        out["jaxmarl"] = _jaxmarl_to_target(Path(repo), s)
        _log(f"target: jaxmarl {out['jaxmarl']['seconds']} s (update {out['jaxmarl']['update']})")
    return out


# --------------------------------------------------------------- 6. decision-time search
def _openspiel_decision(state: Any, n: int, rng: np.random.Generator, policy=None) -> None:
    """One search decision as a plain Python loop would make it: for every legal action,
    ``n`` clones of the state, the action, then the blueprint to the end: uniform legal moves,
    or ``policy(observation tensor) -> logits`` (a jitted network, one call per move)."""
    for a in state.legal_actions():
        for _ in range(n):
            s = state.clone()
            s.apply_action(a)
            while not s.is_terminal():
                if s.is_chance_node():
                    outcomes, probs = zip(*s.chance_outcomes(), strict=True)
                    s.apply_action(outcomes[rng.choice(len(outcomes), p=probs)])
                    continue
                legal = s.legal_actions()
                if policy is None:
                    s.apply_action(legal[rng.integers(len(legal))])
                    continue
                logits = np.asarray(policy(np.asarray(s.observation_tensor(), np.float32)))
                z = logits[legal] - logits[legal].max()
                p = np.exp(z) / np.exp(z).sum()
                s.apply_action(legal[rng.choice(len(legal), p=p)])


def _mlp(hidden: Sequence[int], out: int):
    import flax.linen as nn

    class MLP(nn.Module):
        @nn.compact
        def __call__(self, x):
            for h in hidden:
                x = nn.relu(nn.Dense(h)(x))
            return nn.Dense(out)(x)

    return MLP()


def bench_search(s: Settings) -> dict[str, Any]:
    """Decisions per second of MD search with ``n`` rollouts per action at the first decision
    of ``hanabi/small``, for two blueprints: uniform, and an IPPO network (128 x 128, relu;
    untrained: the timing does not depend on the weights). Ours: the jitted searcher (belief
    particles, then every ``particle x action`` rollout vmapped; every action is rolled out,
    legal or not). Theirs: a Python loop of OpenSpiel state clones doing ``n`` rollouts per
    legal action, with no belief sampling, the network (the same sizes, on OpenSpiel's
    observation) called once per move through ``jax.jit``."""
    import jax
    import jax.numpy as jnp
    import pyspiel

    from marl import envs
    from marl.agents import make_policy
    from marl.agents.search import JaxSearch, SearchConfig, policy_blueprint, uniform_blueprint
    from marl.agents.search_beliefs import PlayContext, hanabi_belief
    from marl.config import compose

    n = 4 if s.quick else 16
    env = envs.make_array_env("hanabi/small")
    raw = env.env
    state, ts = env.reset(jax.random.PRNGKey(0))
    A = env.spec.num_agents
    hidden = (128, 128)
    cfg = compose(["env=hanabi/small", "algo=ippo", "algo.network.hidden=[128,128]"])
    policy = make_policy(cfg.algo, env.spec, 1)
    game = pyspiel.load_game(
        f"hanabi(players=2,colors={raw.num_colors},ranks={raw.num_ranks},"
        f"hand_size={raw.hand_size},max_information_tokens={raw.max_info_tokens},"
        f"max_life_tokens={raw.max_life_tokens})"
    )
    root = game.new_initial_state()
    while root.is_chance_node():
        outcomes, _ = zip(*root.chance_outcomes(), strict=True)
        root.apply_action(outcomes[0])
    mlp = _mlp(hidden, game.num_distinct_actions())
    obs0 = np.zeros((game.observation_tensor_size(),), np.float32)
    mlp_params = mlp.init(jax.random.PRNGKey(0), obs0)
    their_policy = jax.jit(lambda x: mlp.apply(mlp_params, x))
    rows = []
    for label, bp, theirs_fn in (
        ("uniform", uniform_blueprint(), None),
        (
            "ippo 128x128",
            policy_blueprint(policy, policy.init(jax.random.PRNGKey(1))),
            their_policy,
        ),
    ):
        search = JaxSearch(env, bp, SearchConfig("md", samples=n, rollouts=1), max_depth=60)
        belief = hanabi_belief(env, bp)

        @jax.jit
        def decide(params, key, search=search, belief=belief, bp=bp):
            ctx = PlayContext(state.env_state, 0, ts.obs, ts.avail_actions, jnp.full((A,), -1))
            k_b, k_s = jax.random.split(key)
            parts, w = belief(params, k_b, ctx, n)
            lp = bp.log_probs(params, ts.obs, ts.avail_actions, ts.state)[0]
            return search.decide(params, k_s, parts, w, 0, lp, ts.avail_actions[0])[0]

        t0 = _now()
        _block(decide(bp.params, jax.random.PRNGKey(1)))
        compile_s = _now() - t0
        reps = 10 if s.quick else 30
        ours = _timed_repeats(
            lambda i, p=bp.params, f=decide: _block(f(p, jax.random.PRNGKey(i + 2))), reps
        )
        if theirs_fn is not None:
            theirs_fn(obs0).block_until_ready()  # compiled before timing
        rng = np.random.default_rng(0)
        theirs = _timed_repeats(
            lambda i, f=theirs_fn, g=rng: _openspiel_decision(root, n, g, f), 3 if s.quick else 5
        )
        rows.append(
            {
                "blueprint": label,
                "ours_decisions_per_s": 1.0 / _median(ours),
                "openspiel_decisions_per_s": 1.0 / _median(theirs),
                "ratio": _median(theirs) / _median(ours),
                "compile_s": compile_s,
            }
        )
        _log(f"search, {label}: {rows[-1]['ratio']:.2f}x")
    return {
        "env": "hanabi/small",
        "rollouts_per_action": n,
        "legal_actions": int(np.asarray(ts.avail_actions[0]).sum()),
        "openspiel_legal_actions": len(root.legal_actions()),
        "rows": rows,
    }


def bench_scaling(s: Settings) -> dict[str, Any]:
    envs_rows = []
    for E in s.scaling_envs:
        ov = ["env=mpe/simple_spread", "algo=mappo", f"num_envs={E}"]
        if s.quick:
            ov.append("algo.rollout_len=16")
        n = _updates_for(ov, s.train_target_steps, s.pz_train_updates)
        r = measure_training(ov, n, s.repeats, f"mappo x{E}")
        envs_rows.append(r)
        _log(f"scaling envs={E}: {r['steps_per_s']:,.0f} steps/s")
    seed_rows = []
    E = 8 if s.quick else 64
    for S in s.seeds:
        ov = ["env=mpe/simple_spread", "algo=mappo", f"num_envs={E}"]
        if S != 1:
            ov.append(f"num_seeds={S}")
        if s.quick:
            ov.append("algo.rollout_len=16")
        r = measure_training(ov, s.seeds_updates, s.repeats, f"mappo seeds={S}")
        r["wall_s"] = _median(r["times_s"])
        seed_rows.append(r)
        _log(f"scaling seeds={S}: {r['wall_s']:.2f} s per chunk, {r['steps_per_s']:,.0f} steps/s")
    base = seed_rows[0]["wall_s"]
    for r in seed_rows:
        r["wall_ratio_vs_1"] = r["wall_s"] / base
    return {"num_envs": envs_rows, "num_seeds": seed_rows}


# --------------------------------------------------------------------------- 5. compile times
_CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
from marl.cli import enable_compile_cache
enable_compile_cache()
import jax
from marl.config import compose
from marl.trainer import Trainer
overrides = json.loads(sys.argv[1])
t_import = time.perf_counter()
cfg = compose(overrides)
t0 = time.perf_counter()
trainer = Trainer(cfg, None)
ta = time.perf_counter()
runner = jax.block_until_ready(trainer.init_runner())
tb = time.perf_counter()
runner, metrics = trainer.run_chunk(runner, 1)
jax.block_until_ready(runner)
t1 = time.perf_counter()
print("BENCH_RESULT " + json.dumps({
    "import_s": t_import - t_start,
    "compose_s": t0 - t_import,
    "to_first_update_s": t1 - t0,
    "parts_s": {"trainer": ta - t0, "init_runner": tb - ta, "first_chunk": t1 - tb},
    "chunk_updates": int(trainer.sched.chunk),
    "cache_dir": jax.config.jax_compilation_cache_dir,
}))
"""


def _child_first_update(overrides: Sequence[str], cache_dir: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["MARL_COMPILE_CACHE"] = cache_dir
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["WANDB_MODE"] = "disabled"
    t0 = _now()
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(list(overrides))],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    wall = _now() - t0
    line = [x for x in out.stdout.splitlines() if x.startswith("BENCH_RESULT ")]
    if out.returncode != 0 or not line:
        raise RuntimeError(f"compile child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    res = json.loads(line[-1].split(" ", 1)[1])
    res["process_wall_s"] = wall
    return res


def bench_compile(s: Settings) -> dict[str, Any]:
    """Default ``marl train`` config (1 seed), fresh processes: an empty persistent cache, then
    a second launch reusing it. Time = Trainer construction + first chunk of 1 update."""
    overrides = ["logger.wandb.mode=disabled", "logger.progress=false"]
    if s.quick:
        overrides += ["num_envs=8", "algo.rollout_len=16"]
    with tempfile.TemporaryDirectory(prefix="marl-bench-cache-") as cache:
        first = _child_first_update(overrides, cache)
        entries = len(os.listdir(cache))
        # quick: one cached launch (each is a fresh interpreter importing JAX)
        second = [_child_first_update(overrides, cache) for _ in range(1 if s.quick else 3)]
    cached = _median([r["to_first_update_s"] for r in second])
    _log(f"compile: first {first['to_first_update_s']:.1f} s, cached {cached:.2f} s")
    return {
        "overrides": overrides,
        "first_launch": first,
        "cache_entries": entries,
        "cached_launches": second,
        "first_s": first["to_first_update_s"],
        "cached_s": cached,
        "cached_process_wall_s": _median([r["process_wall_s"] for r in second]),
    }


# ----------------------------------------------------------------- 7. whole-process relaunch
RELAUNCH_COMMAND = (
    "env=mpe/simple_spread",
    "algo=mappo",
    "total_timesteps=20000",
    "num_envs=16",
)


def _timed_process(cmd: list[str], env: dict[str, str], cwd: str) -> float:
    t0 = _now()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    wall = _now() - t0
    if out.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])} ... failed ({out.returncode}):\n{out.stderr[-2000:]}"
        )
    return wall


def bench_relaunch(s: Settings, repo: str | None) -> dict[str, Any]:
    """``marl train`` on a tiny budget timed as a whole process (interpreter start, imports,
    tracing, compiles, training, evaluation, checkpoints, W&B offline): with an empty
    compilation cache, then relaunched on the same cache; next to JaxMARL's own
    ``ippo_ff_mpe.py`` at the same budget (one seed) in the same run."""
    cached_runs = 1 if s.quick else 2
    with tempfile.TemporaryDirectory(prefix="marl-bench-relaunch-") as tmp:
        env = dict(os.environ)
        env.update(MARL_COMPILE_CACHE=os.path.join(tmp, "cache"), JAX_PLATFORMS="cpu")
        cmd = [sys.executable, "-m", "marl.cli", "train", *RELAUNCH_COMMAND]
        cmd.append(f"logger.root={os.path.join(tmp, 'runs')}")
        first = _timed_process(cmd, env, tmp)
        cached = [_timed_process(cmd, env, tmp) for _ in range(cached_runs)]
        _log(f"relaunch: first {first:.1f} s, cached {_median(cached):.1f} s")
        out: dict[str, Any] = {
            "command": "marl train " + " ".join(RELAUNCH_COMMAND),
            "first_s": first,
            "cached_s": _median(cached),
            "cached_runs_s": cached,
        }
        script = Path(repo) / "baselines" / "IPPO" / "ippo_ff_mpe.py" if repo else None
        if script is None or not script.is_file():
            out["jaxmarl_error"] = "not run: pass --jaxmarl-repo PATH"
            return out
        theirs = [
            sys.executable,
            str(script),
            "TOTAL_TIMESTEPS=20000",
            "NUM_ENVS=16",
            "NUM_SEEDS=1",
            "WANDB_MODE=disabled",
            f"hydra.run.dir={os.path.join(tmp, 'jaxmarl')}",
        ]
        try:
            out["jaxmarl_s"] = _median([_timed_process(theirs, env, tmp) for _ in range(1)])
            _log(f"relaunch: JaxMARL ippo_ff_mpe.py {out['jaxmarl_s']:.1f} s")
        except RuntimeError as e:
            out["jaxmarl_error"] = str(e)[:500]
    return out


# -------------------------------------------------------------------------------- targets
def _verdict(key: str, value: float, detail: str = "") -> dict[str, Any]:
    desc, op, thr, unit = TARGETS[key]
    ok = {">=": value >= thr, "<": value < thr, "<=": value <= thr}[op]
    if op == ">=":
        margin = value / thr - 1.0  # > 0 passes
        by = f"{abs(margin) * 100:.0f}% {'above' if ok else 'below'}"
    else:
        margin = 1.0 - value / thr
        by = f"{value / thr:.2f}x the limit"
        if unit == "s":
            by += f", {abs(thr - value):.2f} s {'under' if ok else 'over'}"
    return {
        "key": key,
        "target": f"{op} {thr:g}{unit}",
        "description": desc,
        "value": value,
        "unit": unit,
        "status": "PASS" if ok else "MISS",
        "margin": margin,
        "by": by,
        "detail": detail,
    }


def evaluate_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    base = res.get("jaxmarl_baseline") or {}
    train = {r["label"]: r for r in res.get("train", [])}
    ref = base.get("steps_per_s")
    ref_name = "JaxMARL ippo_ff_mpe.py"
    if ref is None and "ippo mpe jaxmarl-config" in train:
        ref = train["ippo mpe jaxmarl-config"]["steps_per_s"]
        ref_name = "our reproduction of their config (baseline not run)"
    if ref and "ippo mpe jaxmarl-config" in train:
        v = train["ippo mpe jaxmarl-config"]["steps_per_s"] / ref
        out.append(_verdict("ippo_vs_jaxmarl", v, f"vs {ref_name}: {ref:,.0f} steps/s"))
    comp = res.get("compile")
    if comp:
        out.append(_verdict("first_compile", comp["first_s"]))
        out.append(_verdict("cached_launch", comp["cached_s"]))
    by_env: dict[str, list[dict[str, Any]]] = {}
    for r in res.get("env", []):
        by_env.setdefault(r["env"], []).append(r)
    for name, rows in by_env.items():
        worst = min(rows, key=lambda r: r["ratio"])
        t = _verdict("array_view", worst["ratio"], f"{name}, worst at {worst['num_envs']} envs")
        t["key"] = f"array_view[{name}]"
        out.append(t)
    for r in res.get("pettingzoo", []):
        t = _verdict(
            "bridge_2_workers",
            r["ratio_async2_vs_sync"],
            f"{r['num_envs']} envs; vs mpe2 in a plain loop {r['ratio_async2_vs_plain']:.2f}x",
        )
        t["key"] = f"bridge_2_workers[{r['num_envs']}]"
        out.append(t)
        t = _verdict("policy_in_loop", r["policy_in_loop"]["ratio"], f"{r['num_envs']} envs")
        t["key"] = f"policy_in_loop[{r['num_envs']}]"
        out.append(t)
    tt = res.get("target") or {}
    ours, theirs = tt.get("ours"), tt.get("jaxmarl")
    if ours and theirs:
        if ours["seconds"] is None:
            t = _verdict("time_to_target", float("inf"), "ours never reached the target")
        else:
            # JaxMARL not reaching it within its run: its whole run is a lower bound
            ref, note = theirs["seconds"], "JaxMARL reached it"
            if ref is None:
                ref, note = theirs["wall_s"], "JaxMARL did not reach it: its whole run"
            detail = f"ours {ours['seconds']:.0f} s, {note} {ref:.0f} s"
            same = tt.get("ours_jaxmarl_config") or {}
            if same.get("seconds"):
                detail += (
                    f"; their config in marl {same['seconds']:.0f} s "
                    f"({ours['seconds'] / same['seconds']:.2f}x)"
                )
            t = _verdict("time_to_target", ours["seconds"] / ref, detail)
        out.append(t)
    mappo = train.get("mappo smax/3m defaults")
    for algo in ("mat", "commformer"):
        r = train.get(f"{algo} smax/3m")
        if mappo and r:
            detail = f"{r['steps_per_s']:,.0f} vs {mappo['steps_per_s']:,.0f} steps/s"
            out.append(
                _verdict(f"{algo}_vs_mappo", r["steps_per_s"] / mappo["steps_per_s"], detail)
            )
    sr = res.get("search")
    for r in (sr or {}).get("rows", []):
        detail = (
            f"{r['ours_decisions_per_s']:.3g} vs {r['openspiel_decisions_per_s']:.3g} "
            f"decisions/s, {sr['rollouts_per_action']} rollouts per action"
        )
        t = _verdict("search_vs_openspiel", r["ratio"], detail)
        t["key"] = f"search_vs_openspiel[{r['blueprint']}]"
        out.append(t)
    rl = res.get("relaunch")
    if rl:
        out.append(_verdict("relaunch_first", rl["first_s"], rl["command"]))
        out.append(_verdict("relaunch_cached", rl["cached_s"], rl["command"]))
        if rl.get("jaxmarl_s"):
            detail = f"{rl['cached_s']:.1f} s vs {rl['jaxmarl_s']:.1f} s"
            out.append(_verdict("relaunch_vs_jaxmarl", rl["cached_s"] / rl["jaxmarl_s"], detail))
    seeds = (res.get("scaling") or {}).get("num_seeds") or []
    if len(seeds) > 1:
        last = seeds[-1]
        t = _verdict("seeds_8_vs_1", last["wall_ratio_vs_1"], f"{last['num_seeds']} seeds vs 1")
        out.append(t)
    return out


# --------------------------------------------------------------------------------- report
def _fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def print_report(res: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=175)
    console.print(f"[bold]marl speed benchmark[/] {res['meta']['date']}  {res['meta']['command']}")
    console.print(machine_line(res["machine"]))
    verdicts = {t["key"]: t for t in res.get("targets", [])}

    def mark(key: str) -> str:
        t = verdicts.get(key)
        if t is None:
            return ""
        colour = "green" if t["status"] == "PASS" else "red"
        return f"[{colour}]{t['status']}[/] {t['target']} ({t['by']})"

    if res.get("env"):
        t = Table(title="1. Pure-JAX stepping, steps/s (copies x steps), median")
        cols = ["env", "copies", "raw JaxMARL", "array view", "ours/raw"]
        diag = any("ours_randint" in r for r in res["env"])
        if diag:
            cols += ["view, randint actions", "randint/raw"]
        for c in (*cols, "compile raw/ours s"):
            t.add_column(c, justify="right")
        for r in res["env"]:
            ok = "green" if r["ratio"] >= TARGETS["array_view"][2] else "red"
            cells = [
                r["env"],
                str(r["num_envs"]),
                _fmt(r["raw"]["steps_per_s"]),
                _fmt(r["ours"]["steps_per_s"]),
                f"[{ok}]{r['ratio']:.2f}x[/]",
            ]
            if diag:
                d = r.get("ours_randint")
                cells += [_fmt(d["steps_per_s"]), f"{r['ratio_randint']:.2f}x"] if d else ["", ""]
            cells.append(f"{r['raw']['compile_s']:.1f} / {r['ours']['compile_s']:.1f}")
            t.add_row(*cells)
        console.print(t)
    if res.get("pettingzoo"):
        t = Table(title="1b. mpe2 simple_spread_v3 through PettingZoo, steps/s, median")
        for c in (
            "copies",
            "plain loop",
            "bridge sync",
            "async 2 workers",
            "async2/plain",
            "policy in loop",
            "random (same)",
            "policy/random",
        ):
            t.add_column(c, justify="right")
        for r in res["pettingzoo"]:
            p = r["policy_in_loop"]
            t.add_row(
                str(r["num_envs"]),
                _fmt(r["plain_loop"]["steps_per_s"]),
                _fmt(r["bridge_sync"]["steps_per_s"]),
                _fmt(r["bridge_async_2"]["steps_per_s"]),
                f"{r['ratio_async2_vs_plain']:.2f}x",
                _fmt(p["policy"]["steps_per_s"]),
                _fmt(p["random"]["steps_per_s"]),
                f"{p['ratio']:.2f}x",
            )
        console.print(t)
    base = res.get("jaxmarl_baseline")
    ref = base["steps_per_s"] if base else None
    if res.get("train") or base:
        t = Table(title="2-3. Training throughput, env steps/s (compile excluded), 1 seed")
        for c in ("config", "envs x steps", "steps/s", "vs JaxMARL IPPO", "first chunk s"):
            t.add_column(c, justify="right")
        if base:
            c = base["config"]
            t.add_row(
                "JaxMARL ippo_ff_mpe.py (reference)",
                f"{c['NUM_ENVS']} x {c['NUM_STEPS']}",
                _fmt(base["steps_per_s"]),
                "1.00x",
                f"compile {base['compile_s']:.1f}",
            )
        for r in res.get("train", []):
            t.add_row(
                r["label"],
                f"{r['num_envs']} x {r['rollout_len']}",
                _fmt(r["steps_per_s"]),
                f"{r['steps_per_s'] / ref:.2f}x" if ref else "-",
                f"{r['first_chunk_s']:.1f}",
            )
        console.print(t)
    sc = res.get("scaling")
    if sc:
        t = Table(title="4. Scaling (MAPPO, mpe/simple_spread)")
        for c in ("run", "steps/s", "chunk wall s", "vs 1 seed"):
            t.add_column(c, justify="right")
        for r in sc["num_envs"]:
            t.add_row(f"{r['num_envs']} envs, 1 seed", _fmt(r["steps_per_s"]), "", "")
        for r in sc["num_seeds"]:
            t.add_row(
                f"{r['num_seeds']} seeds x {r['num_envs']} envs ({r['updates_per_chunk']} upd.)",
                _fmt(r["steps_per_s"]),
                f"{r['wall_s']:.3g}",
                f"{r['wall_ratio_vs_1']:.2f}x",
            )
        console.print(t)
    tt = res.get("target")
    if tt:
        t = Table(
            title=f"3. Wall time to the learning target ({tt['target']}, {tt['smooth']}-update "
            "moving average of the training return)"
        )
        for c in ("run", "steps", "reached at step", "seconds to target", "run wall s"):
            t.add_column(c, justify="right")
        for name, r in (
            ("ours: marl train (defaults)", tt.get("ours")),
            ("ours: preset=jaxmarl_ippo_mpe", tt.get("ours_jaxmarl_config")),
            ("JaxMARL ippo_ff_mpe.py", tt.get("jaxmarl")),
        ):
            if not r:
                continue
            t.add_row(
                name,
                _fmt(r["total_timesteps"]),
                _fmt(r["env_steps_at_target"]) if r["env_steps_at_target"] else "not reached",
                "-" if r["seconds"] is None else f"{r['seconds']:.1f}",
                f"{r['wall_s']:.1f}",
            )
        console.print(t)
    comp = res.get("compile")
    if comp:
        t = Table(title="5. Default training, fresh process: Trainer + first update")
        for c in ("launch", "to first update s", "process wall s (incl. imports)"):
            t.add_column(c, justify="right")
        t.add_row(
            "first (empty cache)",
            f"{comp['first_s']:.2f}",
            f"{comp['first_launch']['process_wall_s']:.2f}",
        )
        t.add_row(
            "second (cached, median)",
            f"{comp['cached_s']:.2f}",
            f"{comp['cached_process_wall_s']:.2f}",
        )
        console.print(t)
    sr = res.get("search")
    if sr:
        t = Table(title=f"6. MD search on {sr['env']}, {sr['rollouts_per_action']} rollouts/action")
        for c in ("blueprint", "marl (JAX) dec/s", "OpenSpiel loop dec/s", "ratio", "compile s"):
            t.add_column(c, justify="right")
        for r in sr["rows"]:
            t.add_row(
                r["blueprint"],
                f"{r['ours_decisions_per_s']:.3g}",
                f"{r['openspiel_decisions_per_s']:.3g}",
                f"{r['ratio']:.2f}x",
                f"{r['compile_s']:.1f}",
            )
        console.print(t)
    at = res.get("attack")
    if at:
        t = Table(title=f"7. Attack training on {at['task']}, env steps/s (compile excluded)")
        for c in ("run", "steps/s", "vs MAPPO team", "compile s"):
            t.add_column(c, justify="right")
        for r in at["rows"]:
            t.add_row(
                r["label"],
                _fmt(r["steps_per_s"]),
                f"{r['ratio_vs_mappo']:.2f}x",
                f"{r['first_chunk_s']:.1f}",
            )
        console.print(t)
    if res.get("targets"):
        t = Table(title="Targets")
        for c in ("target", "measured", "status", "detail"):
            t.add_column(c)
        for v in res["targets"]:
            val = f"{v['value']:.2f}{v['unit']}"
            t.add_row(v["description"], val, mark(v["key"]), v["detail"])
        console.print(t)


# ---------------------------------------------------------------------------------- driver
def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    s = Settings.make(args.quick, args.repeats)
    only = set(args.only.split(",")) if args.only else set(SECTIONS)
    bad = only - set(SECTIONS)
    if bad:
        raise SystemExit(f"--only: unknown section(s) {sorted(bad)}; choose from {SECTIONS}")
    res: dict[str, Any] = {
        "meta": {
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": command,
            "quick": s.quick,
            "repeats": s.repeats,
            "sections": [x for x in SECTIONS if x in only],
        },
        "machine": machine_info(),
    }
    t_all = _now()
    if "env" in only:
        res["env"] = bench_env(s, args.env_names.split(","))
    if "pz" in only:
        res["pettingzoo"] = bench_pz(s)
    if "jaxmarl" in only:
        if args.jaxmarl_repo:
            try:
                res["jaxmarl_baseline"] = bench_jaxmarl(Path(args.jaxmarl_repo), s)
                _log(f"jaxmarl baseline: {res['jaxmarl_baseline']['steps_per_s']:,.0f} steps/s")
            except Exception as e:  # noqa: BLE001 - reported, the rest still runs
                res["jaxmarl_baseline_error"] = f"{type(e).__name__}: {e}"
                _log(f"jaxmarl baseline failed: {res['jaxmarl_baseline_error']}")
        else:
            res["jaxmarl_baseline_error"] = "not run: pass --jaxmarl-repo PATH"
    if "train" in only:
        res["train"] = bench_train(s)
    if "scaling" in only:
        res["scaling"] = bench_scaling(s)
    if "compile" in only:
        res["compile"] = bench_compile(s)
    if "target" in only:
        res["target"] = bench_target(s, args.jaxmarl_repo)
    if "search" in only:
        res["search"] = bench_search(s)
    if "relaunch" in only:
        res["relaunch"] = bench_relaunch(s, args.jaxmarl_repo)
    if "attack" in only:
        res["attack"] = bench_attack(s)
    res["meta"]["total_s"] = _now() - t_all
    res["machine"]["load_avg_end"] = list(os.getloadavg())
    res["targets"] = evaluate_targets(res)
    return res


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="marl bench", description="Speed benchmarks (see BENCHMARKS.md)."
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not numbers")
    p.add_argument("--out", default="runs/bench/speed.json", help="JSON results file")
    p.add_argument("--only", default=None, help=f"comma-separated sections of {SECTIONS}")
    p.add_argument(
        "--env-names",
        default=",".join(ENV_NAMES),
        help="pure-JAX environments of the env section (mpe/simple_spread and smax/3m have "
        "scan lengths tuned; others use smax/3m's)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (>= 3)")
    p.add_argument("--report", default=None, help="only print the tables of a results JSON")
    p.add_argument(
        "--jaxmarl-repo",
        default=os.environ.get("JAXMARL_REPO"),
        help="a JaxMARL checkout (outside this repository) whose baselines/IPPO/ippo_ff_mpe.py "
        "is the reference; default $JAXMARL_REPO",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``marl bench`` / ``scripts/bench.py``: measure, print the tables, write ``--out``."""
    args = build_parser().parse_args(argv)
    if args.report:  # re-print an earlier result (targets re-evaluated)
        res = json.loads(Path(args.report).read_text())
        res["targets"] = evaluate_targets(res)
        print_report(res)
        return 0
    os.environ.setdefault("WANDB_MODE", "disabled")
    command = "python scripts/bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    res = run(args, command.strip())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=_json_default))
    print_report(res)
    print(f"results: {out}")
    return 0


def _json_default(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return str(x)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
