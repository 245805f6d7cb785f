"""``marl render <run dir>``: greedy episodes of a trained policy as a GIF or MP4.

Pure-JAX MPE and SMAX runs are drawn by JaxMARL's own visualisers (``MPEVisualizer``,
``SMAXVisualizer``, with SMAX's sub-steps interpolated). The episode is played step by step on
the host with the run's jitted policy, so the frames are the states the policy saw.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from marl.errors import ConfigError


def _episode(trainer: Any, params: Any, key: jax.Array, max_steps: int):
    """One greedy episode of seed 0's ``params``: ``(env states, (key, state, actions)
    triples for SMAX, return)``."""
    from marl.rollout import policy_input

    env, policy = trainer.env, trainer.policy
    k_reset, key = jax.random.split(key)
    state, ts = env.reset(k_reset)
    hidden = policy.initial_hidden(1)
    act = jax.jit(
        lambda h, inp, k: policy.act(params, h, inp, k, True)[:2]  # greedy
    )
    states, triples, ret = [state.env_state], [], 0.0
    batch = jax.tree.map(lambda x: x[None], ts)
    first = jnp.ones((1,), bool)
    for _ in range(max_steps):
        key, k_act, k_step = jax.random.split(key, 3)
        hidden, actions = act(hidden, policy_input(batch, first), k_act)
        a = actions[0, 0]
        triples.append((k_step, state.env_state, env.actions_to_dict(a)))
        state, ts = env.step(k_step, state, a)
        ret += float(ts.reward.mean())
        if bool(ts.episode_done):
            break
        states.append(state.env_state)
        batch = jax.tree.map(lambda x: x[None], ts)
        first = jnp.zeros((1,), bool)
    return states, triples, ret


def render_run(
    run_dir: str | Path, *, episodes: int = 1, out: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Render ``episodes`` greedy episodes of the run's last checkpoint (seed 0's parameters)
    to ``out`` (``.gif`` or ``.mp4``; default ``<run>/videos/<time>.gif``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from omegaconf import OmegaConf

    from marl.config import validate
    from marl.evaluate import _restore_params
    from marl.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    family = str(cfg.env.name).split("/")[0]
    if cfg.env.kind != "jax" or family not in ("mpe", "smax"):
        raise ConfigError(
            f"marl render draws pure-JAX MPE and SMAX runs; {cfg.env.name} ({cfg.env.kind}) "
            "has no visualiser here"
        )
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    out = Path(out) if out else run_dir / "videos" / f"{time.strftime('%Y%m%d-%H%M%S')}.gif"
    if out.suffix not in (".gif", ".mp4"):
        raise ConfigError(f"--out must end in .gif or .mp4, got {out.name}")
    trainer = Trainer(cfg, run_dir)  # its environment (one copy) and policy
    params, meta = _restore_params(trainer, run_dir, None)
    params = jax.tree.map(lambda x: x[0], params)
    raw = trainer.env.env
    max_steps = trainer.spec.max_steps or int(cfg.eval.max_steps)
    states, triples, returns = [], [], []
    key = jax.random.PRNGKey(seed)
    for _ in range(episodes):
        key, k = jax.random.split(key)
        s, t, r = _episode(trainer, params, k, max_steps)
        states += s
        triples += t
        returns.append(r)
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(io.StringIO()):  # the visualisers print notices
        if family == "mpe":
            from jaxmarl.environments.mpe.mpe_visualizer import MPEVisualizer

            viz = MPEVisualizer(raw, states)
        else:
            from jaxmarl.viz.visualizer import SMAXVisualizer

            viz = SMAXVisualizer(raw, triples)
        logging.getLogger("matplotlib.animation").setLevel(logging.ERROR)  # no ffmpeg: Pillow
        viz.animate(save_fname=str(out), view=False)
    plt.close("all")
    return {
        "run_dir": str(run_dir),
        "video": str(out),
        "episodes": episodes,
        "steps": len(triples),
        "frames": len(viz.state_seq),  # SMAX: its sub-steps interpolated
        "returns": returns,
        "checkpoint_update": meta.get("update"),
    }
