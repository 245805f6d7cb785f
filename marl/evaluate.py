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
from marl.errors import ConfigError


def _restore_params(trainer, run_dir: Path, step: int | None):
    from marl.checkpoint import Checkpointer

    runner = trainer.init_runner()
    if trainer.kind != "jax":  # checkpoints of the PettingZoo path hold no time step
        runner = runner._replace(ts=None)
    template = {
        "runner": runner,
        "best_params": runner.train.params,
        "best_score": jnp.zeros((trainer.S,), jnp.float32),
    }
    with Checkpointer(run_dir / "checkpoints") as ckpt:
        state, meta = ckpt.restore(template, step=step)
    return state["runner"].train.params, meta


def evaluate_run(
    run_dir: str | Path,
    *,
    episodes: int | None = None,
    greedy: bool | None = None,
    env_overrides: list[str] | None = None,
    step: int | None = None,
) -> dict[str, Any]:
    """Evaluate the last (or ``step``) checkpoint of a run; writes
    ``<run>/evaluations/<time>.json`` and returns the results per seed."""
    from marl.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    trained_spec_cfg = cfg.copy()
    if env_overrides:
        bad = [o for o in env_overrides if not o.split("=", 1)[0].lstrip("+").startswith("env")]
        if bad:
            raise ConfigError(
                f"marl evaluate takes env overrides only (env=..., env.*=...), got {bad[0]!r}"
            )
        env_cfg = compose(list(env_overrides)).env
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
        a, b = src.spec, target.spec
        if (a.num_agents, a.obs_dim, a.num_actions, a.action_type) != (
            b.num_agents,
            b.obs_dim,
            b.num_actions,
            b.action_type,
        ):
            raise ConfigError(
                f"{b.name} does not match the trained policy's shapes: agents/obs/actions "
                f"{a.num_agents}/{a.obs_dim}/{a.num_actions} vs "
                f"{b.num_agents}/{b.obs_dim}/{b.num_actions}"
            )
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 424242)
    ret, length, won = target.evaluate(params, key, episodes, greedy)
    result = {
        "run_dir": str(run_dir),
        "env": target.spec.name,
        "checkpoint_update": meta.get("update"),
        "episodes": episodes,
        "greedy": cfg.eval.greedy if greedy is None else greedy,
        "seeds": [
            {
                "seed": s,
                "eval/episode_return": float(np.mean(ret[s])),
                "eval/episode_return_std": float(np.std(ret[s])),
                "eval/episode_length": float(np.mean(length[s])),
                "eval/win_rate": float(np.mean(won[s])) if target.spec.has_win else None,
            }
            for s in range(ret.shape[0])
        ],
        "eval/episode_return": float(np.mean(ret)),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if hasattr(target.env, "close"):
        target.env.close()
    if src is not target and hasattr(src.env, "close"):
        src.env.close()
    out = run_dir / "evaluations"
    out.mkdir(exist_ok=True)
    (out / f"{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(result, indent=2))
    return result
