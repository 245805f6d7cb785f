"""``marl evaluate <run dir>``: evaluate a saved run's parameters, on its own environment or
on another one with the same array shapes (a policy trained on the JAX ``mpe/simple_spread``
evaluated on mpe2's ``simple_spread_v3`` through the PettingZoo bridge, for instance)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf

from marl.config import compose, validate
from marl.errors import ConfigError, MarlError


def _restore_params(trainer, run_dir: Path, step: int | None, best: bool = False):
    """``(params [S, ...], meta)`` of a run's checkpoint (the last, or ``step``): the
    training state's parameters, or with ``best`` the best evaluated ones."""
    from marl.checkpoint import Checkpointer

    runner = trainer.init_runner()
    if trainer.kind != "jax":  # checkpoints of the PettingZoo path hold no time step
        runner = runner._replace(ts=None)
    template = {
        "runner": runner,
        "best_params": runner.train.params,
        "best_score": jnp.zeros((trainer.S,), jnp.float32),
    }
    with Checkpointer(run_dir / "checkpoints", read_only=True) as ckpt:
        state, meta = ckpt.restore(template, step=step)
    return (state["best_params"] if best else state["runner"].train.params), meta


ADAPT_KEYS = {"adapt": str, "adapt_steps": int, "adapt_episodes": int, "adapt_lr": float}


def split_adapt(overrides: list[str]) -> tuple[list[str], dict[str, Any]]:
    """``(env overrides, adaptation options)`` from ``marl evaluate``'s ``key=value`` words
    (``adapt_steps=5 adapt_episodes=32 adapt_lr=1.0 adapt=pg|select``)."""
    rest, opts = [], {}
    for o in overrides:
        key, sep, value = o.partition("=")
        if sep and key in ADAPT_KEYS:
            try:
                opts[key] = ADAPT_KEYS[key](value)
            except ValueError:
                kind = {int: "an integer", float: "a number"}[ADAPT_KEYS[key]]
                raise ConfigError(f"{key}={value!r} is not {kind}") from None
        else:
            rest.append(o)
    return rest, opts


def _same_shapes(src, target) -> bool:
    """Whether the trained parameters run on the target environment: equal array shapes, or
    for a size-agnostic policy (MRA) the same entity features and actions, whatever N."""
    a, b = src.spec, target.spec
    if getattr(src.policy, "size_agnostic", False) and a.entities and b.entities:
        return (a.entities.shapes(), a.num_actions) == (b.entities.shapes(), b.num_actions)
    return (a.num_agents, a.obs_dim, a.num_actions, a.action_type) == (
        b.num_agents,
        b.obs_dim,
        b.num_actions,
        b.action_type,
    )


def _per_seed(ret, length, won, has_win: bool) -> list[dict[str, Any]]:
    return [
        {
            "seed": s,
            "eval/episode_return": float(np.mean(ret[s])),
            "eval/episode_return_std": float(np.std(ret[s])),
            "eval/episode_length": float(np.mean(length[s])),
            "eval/win_rate": float(np.mean(won[s])) if has_win else None,
        }
        for s in range(ret.shape[0])
    ]


def _per_game(trainer, ret) -> dict[str, list[float]]:
    """Per-game mean return of each seed (population environments; empty otherwise)."""
    return {g: np.mean(ret[:, idx], 1).tolist() for g, idx in trainer.games(ret).items()}


def evaluate_run(
    run_dir: str | Path,
    *,
    episodes: int | None = None,
    greedy: bool | None = None,
    env_overrides: list[str] | None = None,
    step: int | None = None,
    adapt: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the last (or ``step``) checkpoint of a run; writes
    ``<run>/evaluations/<time>.json`` and returns the results per seed.

    ``adapt`` (keys of :data:`ADAPT_KEYS`; policies with a latent prior, MRA) also evaluates
    after fast adaptation to the target games: ``adapt_steps`` first-order steps (``adapt=pg``,
    the default) or latent selection (``adapt=select``), each from ``adapt_episodes`` episodes
    (default: ``episodes``); both evaluations use the same episodes' randomness.
    """
    from marl.trainer import Trainer

    if adapt:
        _check_adapt(adapt)
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    trained_spec_cfg = cfg.copy()
    if env_overrides:

        def is_env(o: str) -> bool:
            key = o.split("=", 1)[0].lstrip("+")
            return key == "env" or key.startswith("env.")

        bad = [o for o in env_overrides if not is_env(o)]
        if bad:
            raise ConfigError(
                f"marl evaluate takes env overrides only (env=..., env.*=...), got {bad[0]!r}"
            )
        if any(o.lstrip("+").startswith("env=") for o in env_overrides):
            env_cfg = compose(list(env_overrides)).env
        else:  # env.* keys only: changes to the run's own environment
            try:
                changes = OmegaConf.from_dotlist([o.lstrip("+") for o in env_overrides])
            except Exception as err:  # omegaconf's grammar errors
                raise ConfigError(f"bad env override: {err}") from None
            merged = OmegaConf.merge(OmegaConf.create({"env": cfg.env}), changes)
            env_cfg = validate(OmegaConf.merge(cfg, {"env": merged.env})).env
        if not any(o.startswith("env.agent_id=") for o in env_overrides):
            env_cfg.agent_id = cfg.env.agent_id  # the policy's input layout
        cfg.env = env_cfg
    episodes = episodes or cfg.eval.episodes
    # parameters are restored with the training environment's shapes ...
    src = Trainer(trained_spec_cfg, run_dir)
    params, meta = _restore_params(src, run_dir, step)
    target = src
    if env_overrides:
        cfg.num_envs = min(episodes, cfg.num_envs)
        target = Trainer(cfg, run_dir)
        target.programs = None  # traced with the trained parameters' own shapes
        a, b = src.spec, target.spec
        if _same_shapes(src, target):
            pass
        elif getattr(src.policy, "size_agnostic", False):
            raise ConfigError(
                f"{b.name} does not match the trained policy's inputs: entity features "
                f"(self, descriptor, entity) / actions {a.entities and a.entities.shapes()}/"
                f"{a.num_actions} vs {b.entities and b.entities.shapes()}/{b.num_actions}"
            )
        else:
            raise ConfigError(
                f"{b.name} does not match the trained policy's shapes: agents/obs/actions "
                f"{a.num_agents}/{a.obs_dim}/{a.num_actions} vs "
                f"{b.num_agents}/{b.obs_dim}/{b.num_actions}"
            )
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 424242)
    greedy = cfg.eval.greedy if greedy is None else greedy
    games = len(target.spec.games)
    for name, n in (
        ("episodes", episodes),
        ("adapt_episodes", (adapt or {}).get("adapt_episodes")),
    ):
        if n is not None and n < games:
            raise ConfigError(
                f"{name}={n}: {target.spec.name} plays {games} games, one each at least"
            )
    ret, length, won = target.evaluate(params, key, episodes, greedy)
    adapted = _adapt(target, params, key, episodes, greedy, adapt) if adapt else None
    result = {
        "run_dir": str(run_dir),
        "env": target.spec.name,
        "checkpoint_update": meta.get("update"),
        "episodes": episodes,
        "greedy": greedy,
        "seeds": _per_seed(ret, length, won, target.spec.has_win),
        "eval/episode_return": float(np.mean(ret)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if target.spec.games:
        result["games"] = _per_game(target, ret)
    if adapted is not None:
        result["adapted"] = adapted
    if hasattr(target.env, "close"):
        target.env.close()
    if src is not target and hasattr(src.env, "close"):
        src.env.close()
    out = run_dir / "evaluations"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    return result


def _check_adapt(opts: dict[str, Any]) -> None:
    bad = sorted(set(opts) - set(ADAPT_KEYS))
    if bad:
        raise ConfigError(f"unknown adaptation option {bad[0]!r} ({', '.join(ADAPT_KEYS)})")
    if opts.get("adapt", "pg") not in ("pg", "select"):
        raise ConfigError(f"adapt method must be pg or select, got {opts['adapt']!r}")
    if opts.get("adapt_steps", 5) < 0 or opts.get("adapt_episodes", 1) < 1:
        raise ConfigError("adapt_steps must be >= 0 and adapt_episodes >= 1")


def _adapt(target, params, key, episodes: int, greedy: bool, opts: dict[str, Any]):
    """Fast adaptation of ``params`` to the target games, then the same evaluation."""
    from marl.rollout import make_jax_eval

    fn = getattr(target.policy, "adapt", None)
    if fn is None or target.kind != "jax" or not target.spec.games:
        raise ConfigError(
            "adaptation (adapt_*) needs a policy with a latent prior (algo=mra) on a "
            "population environment (env=population/...)"
        )
    steps = opts.get("adapt_steps", 5)
    n = opts.get("adapt_episodes", episodes)
    t0 = time.perf_counter()
    new, history = fn(
        target.env,
        params,
        jax.random.fold_in(key, 1),
        steps=steps,
        episodes=n,
        lr=opts.get("adapt_lr", 0.5),
        method=opts.get("adapt", "pg"),
        greedy=greedy,
        max_steps=target.eval_steps,
    )
    ev = make_jax_eval(target.env, target.policy, episodes, target.eval_steps, greedy)
    ret, length, won, finished = jax.device_get(jax.jit(jax.vmap(ev, in_axes=(0, None)))(new, key))
    if not finished.all():
        raise MarlError(
            f"evaluation episodes did not end within {target.eval_steps} steps; "
            "raise eval.max_steps"
        )
    return {
        "method": opts.get("adapt", "pg"),
        "steps": steps,
        "episodes_per_step": n,
        "seeds": _per_seed(ret, length, won, target.spec.has_win),
        "eval/episode_return": float(np.mean(ret)),
        "games": _per_game(target, ret),
        "history": history,
        "seconds": round(time.perf_counter() - t0, 2),
    }
