"""Watching policies: greedy episodes of a trained policy as a GIF or an MP4.

``marl render <run dir>`` plays the run's last checkpoint (seed 0's parameters); the final
evaluation of ``marl train`` renders one episode of the best parameters into
``<run>/videos/final.gif`` and logs it to W&B as media (``eval.video=false`` turns it off).

Pure-JAX MPE and SMAX states are drawn here with Pillow (circles in the entities' own
colours and sizes; SMAX units by team, faded with their health): under a millisecond a frame
on host arrays, where JaxMARL's matplotlib visualisers took seconds per frame for SMAX.
PettingZoo runs are drawn by the environment itself (``render_mode="rgb_array"``) through the
in-process bridge. GIFs are written by Pillow; MP4 needs ``ffmpeg`` on the PATH.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl.errors import ConfigError

SIZE = 320  # frame side in pixels
FPS = 10
_BACKGROUND = (255, 255, 255)
_TEAMS = ((46, 110, 220), (214, 48, 49))  # SMAX allies, enemies


# ----------------------------------------------------------------------------- drawing
def _canvas(size: int) -> tuple[Any, Any]:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), _BACKGROUND)
    return image, ImageDraw.Draw(image)


def _circle(draw: Any, xy: tuple[float, float], r: float, fill: Any, outline: Any = None):
    x, y = xy
    draw.ellipse((x - r, y - r, x + r, y + r), fill=fill, outline=outline)


def _rgb(colour: Any) -> tuple[int, int, int]:
    """An MPE colour as RGB: three (or four) channels, or one grey level (simple_push)."""
    c = np.asarray(colour, dtype=np.float64).reshape(-1)
    c = np.repeat(c, 3) if c.size == 1 else c[:3]
    return tuple(int(v) for v in np.clip(c, 0, 255))


def draw_mpe(raw: Any, env_state: Any, size: int = SIZE, extent: float = 2.0) -> np.ndarray:
    """One MPE frame: every entity a circle of its radius and colour, the world
    ``[-extent, extent]^2`` (JaxMARL's visualiser's view)."""
    image, draw = _canvas(size)
    scale = size / (2 * extent)
    pos = np.asarray(env_state.p_pos)
    rad = np.asarray(raw.rad)
    # landmarks under agents: draw the higher indices (landmarks) first
    for i in reversed(range(pos.shape[0])):
        x, y = pos[i]
        centre = ((x + extent) * scale, (extent - y) * scale)
        _circle(draw, centre, max(rad[i] * scale, 1.5), _rgb(raw.colour[i]))
    return np.asarray(image)


def smax_view(raw: Any, env_states: list[Any], margin: float = 2.0, least: float = 10.0):
    """The square of the map an episode's units stay in (``x0, y0, side``), with a margin:
    SMAX maps are 32 x 32 and the fights take a corner of them."""
    pts = []
    for st in env_states:
        s = getattr(st, "state", st)
        alive = np.asarray(s.unit_alive)
        pts.append(np.asarray(s.unit_positions)[alive])
    pts = np.concatenate(pts) if pts else np.zeros((0, 2))
    if not len(pts):
        return 0.0, 0.0, float(max(raw.map_width, raw.map_height))
    lo, hi = pts.min(0) - margin, pts.max(0) + margin
    side = float(max(hi[0] - lo[0], hi[1] - lo[1], least))
    centre = (lo + hi) / 2
    return float(centre[0] - side / 2), float(centre[1] - side / 2), side


def draw_smax(raw: Any, env_state: Any, size: int = SIZE, view=None) -> np.ndarray:
    """One SMAX frame: each living unit a circle of its type's radius in its team's colour,
    faded as it loses health; dead units are left out. ``view`` ``(x0, y0, side)`` is the
    square of the map drawn (default: the whole map)."""
    image, draw = _canvas(size)
    s = getattr(env_state, "state", env_state)  # the heuristic-enemy wrapper's inner state
    pos = np.asarray(s.unit_positions)
    alive = np.asarray(s.unit_alive)
    teams = np.asarray(s.unit_teams)
    types = np.asarray(s.unit_types)
    health = np.asarray(s.unit_health)
    max_health = np.asarray(raw.unit_type_health)[types]
    radius = np.asarray(raw.unit_type_radiuses)[types]
    x0, y0, side = view or (0.0, 0.0, float(max(raw.map_width, raw.map_height)))
    scale = size / side
    for i in range(pos.shape[0]):
        if not alive[i]:
            continue
        frac = float(np.clip(health[i] / max(max_health[i], 1e-6), 0.0, 1.0))
        base = np.array(_TEAMS[int(teams[i]) % 2], np.float64)
        colour = tuple(int(c) for c in 255 - (255 - base) * (0.25 + 0.75 * frac))
        centre = ((pos[i, 0] - x0) * scale, size - (pos[i, 1] - y0) * scale)
        _circle(draw, centre, max(radius[i] * scale, 2.0), colour, outline=tuple(map(int, base)))
    return np.asarray(image)


def _draw_all(cfg: Any, raw: Any, env_states: list[Any]) -> list[np.ndarray]:
    """The frames of an episode's states (SMAX: zoomed on where its units fight)."""
    family = str(cfg.env.name).split("/")[0]
    if family == "smax":
        view = smax_view(raw, env_states)
        return [draw_smax(raw, st, view=view) for st in env_states]
    return [draw_mpe(raw, st) for st in env_states]


def can_render(cfg: Any) -> bool:
    """Whether episodes of this run's environment can be drawn (MPE, SMAX, PettingZoo)."""
    family = str(cfg.env.name).split("/")[0]
    return cfg.env.kind == "pettingzoo" or (cfg.env.kind == "jax" and family in ("mpe", "smax"))


# ----------------------------------------------------------------------------- episodes
def _act_fn(policy: Any, params: Any):
    return jax.jit(lambda h, inp, k: policy.act(params, h, inp, k, True)[:2])  # greedy


def _episode_fn(trainer: Any, max_steps: int):
    """``episode(params, key) -> (env states [T], rewards [T], done [T])``: ``max_steps``
    greedy steps of one environment in one program (the states before each step; the episode
    is the steps up to the first ``done``, the rest runs on past the automatic reset)."""
    from marl.rollout import policy_input

    env, policy = trainer.env, trainer.policy

    def episode(params, key):
        k_reset, key = jax.random.split(key)
        state, ts = env.reset(k_reset)

        def step(carry, k):
            state, ts, hidden, first = carry
            k_act, k_step = jax.random.split(k)
            batch = jax.tree.map(lambda x: x[None], ts)
            inp = policy_input(batch, jnp.full((1,), first))
            hidden, actions = policy.act(params, hidden, inp, k_act, True)[:2]
            next_state, next_ts = env.step(k_step, state, actions[0, 0])
            out = (state.env_state, next_ts.reward.mean(), next_ts.episode_done)
            return (next_state, next_ts, hidden, jnp.asarray(False)), out

        carry = (state, ts, policy.initial_hidden(1), jnp.asarray(True))
        return jax.lax.scan(step, carry, jax.random.split(key, max_steps))[1]

    return jax.jit(episode)


def _jax_episode(trainer: Any, params: Any, key: jax.Array, max_steps: int):
    """One greedy episode on the pure-JAX environment: ``(frames, steps, return)``. The
    episode is one compiled program, kept in the program cache like the training's."""
    abstract = (
        jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), params),
        jax.ShapeDtypeStruct(jnp.shape(key), jnp.asarray(key).dtype),
    )
    name = f"render-episode-{max_steps}"
    if name not in trainer.__dict__.setdefault("_render", {}):
        build = lambda: _episode_fn(trainer, max_steps)  # noqa: E731
        trainer._render[name] = trainer._program(name, build, abstract)
    states, rewards, done = jax.device_get(trainer._render[name](params, key))
    ends = np.flatnonzero(np.asarray(done))
    steps = int(ends[0]) + 1 if len(ends) else max_steps
    frames = [jax.tree.map(lambda x, t=t: x[t], states) for t in range(steps)]
    return _draw_all(trainer.cfg, trainer.env.env, frames), steps, float(rewards[:steps].sum())


def _pettingzoo_episodes(cfg: Any, policy: Any, params: Any, seed: int, episodes: int, max_steps):
    """Greedy episodes of a PettingZoo run, drawn by the environment (``rgb_array``)."""
    from functools import partial

    from omegaconf import OmegaConf

    from marl.envs.pettingzoo_vector import pettingzoo_vector_env
    from marl.rollout import policy_input
    from marl.trainer import load_factory

    kwargs = OmegaConf.to_container(cfg.env.kwargs, resolve=True)
    fn = partial(load_factory(cfg.env.factory), **kwargs, render_mode="rgb_array")
    venv = pettingzoo_vector_env(
        fn, 1, name=cfg.env.name, mode="sync", agent_id=cfg.env.agent_id, seed=seed
    )
    act = _act_fn(policy, params)
    out = []
    key = jax.random.PRNGKey(seed)
    try:
        for ep in range(episodes):
            ts = venv.reset(seed + ep)
            env = venv.unwrapped_envs[0]  # built at the first reset
            hidden = policy.initial_hidden(1)
            frames, ret, first, steps = [_frame(env)], 0.0, True, 0
            for steps in range(1, max_steps + 1):  # noqa: B007
                key, k_act = jax.random.split(key)
                batch = jax.tree.map(jnp.asarray, ts)
                hidden, actions = act(hidden, policy_input(batch, jnp.full((1,), first)), k_act)
                ts = venv.step(np.asarray(actions[0]))  # [1 copy, A]
                ret += float(np.mean(ts.reward))
                first = False
                if bool(np.asarray(ts.episode_done).any()):
                    break
                frames.append(_frame(env))
            out.append((frames, steps, ret))
    finally:
        venv.close()
    return out


def _frame(env: Any) -> np.ndarray:
    frame = env.render()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3:
        raise ConfigError(
            f"{type(env).__name__}.render() gave no RGB array; the environment needs "
            "render_mode='rgb_array' for marl render"
        )
    return frame[..., :3].astype(np.uint8)


def write_video(frames: list[np.ndarray], out: Path, fps: int = FPS) -> Path:
    """``frames`` ``[H, W, 3]`` uint8 as a GIF (Pillow) or an MP4 (``ffmpeg``)."""
    from PIL import Image

    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(
            out, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0
        )
        return out
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise ConfigError("writing .mp4 needs ffmpeg on the PATH; write a .gif instead")
    h, w = frames[0].shape[:2]
    cmd = [ffmpeg, "-y", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{w}x{h}", "-r", str(fps), "-i", "-", "-pix_fmt", "yuv420p", str(out)]
    subprocess.run(cmd, input=b"".join(f.tobytes() for f in frames), check=True)
    return out


def render_episodes(
    trainer: Any, params: Any, out: Path, *, episodes: int = 1, seed: int = 0
) -> dict[str, Any]:
    """Draw ``episodes`` greedy episodes of one seed's ``params`` into ``out``."""
    cfg = trainer.cfg
    max_steps = trainer.spec.max_steps or int(cfg.eval.max_steps)
    t0 = time.perf_counter()
    if cfg.env.kind == "pettingzoo":
        runs = _pettingzoo_episodes(cfg, trainer.policy, params, seed, episodes, max_steps)
    else:
        key, runs = jax.random.PRNGKey(seed), []
        for _ in range(episodes):
            key, k = jax.random.split(key)
            runs.append(_jax_episode(trainer, params, k, max_steps))
    frames = [f for fr, _, _ in runs for f in fr]
    write_video(frames, out)
    return {
        "video": str(out),
        "episodes": episodes,
        "steps": sum(s for _, s, _ in runs),
        "frames": len(frames),
        "returns": [r for _, _, r in runs],
        "seconds": round(time.perf_counter() - t0, 2),
    }


def render_run(
    run_dir: str | Path, *, episodes: int = 1, out: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Render ``episodes`` greedy episodes of the run's last checkpoint (seed 0's parameters)
    to ``out`` (``.gif`` or ``.mp4``; default ``<run>/videos/<time>.gif``)."""
    from omegaconf import OmegaConf

    from marl.config import validate
    from marl.evaluate import _restore_params
    from marl.trainer import Trainer

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run directory (no config.yaml)")
    cfg = validate(OmegaConf.load(run_dir / "config.yaml"))
    if not can_render(cfg):
        raise ConfigError(
            f"marl render draws MPE, SMAX and PettingZoo runs; {cfg.env.name} ({cfg.env.kind}) "
            "has no drawing here"
        )
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    out = Path(out) if out else run_dir / "videos" / f"{time.strftime('%Y%m%d-%H%M%S')}.gif"
    if out.suffix not in (".gif", ".mp4"):
        raise ConfigError(f"--out must end in .gif or .mp4, got {out.name}")
    # the environment (one copy; PettingZoo: in process) and the policy
    cfg.env.workers = "sync"
    trainer = Trainer(cfg, run_dir)
    try:
        params, meta = _restore_params(trainer, run_dir, None)
        params = jax.tree.map(lambda x: x[0], params)
        result = render_episodes(trainer, params, out, episodes=episodes, seed=seed)
    finally:
        close = getattr(trainer.env, "close", None)
        if cfg.env.kind == "pettingzoo" and close is not None:
            close()
    return {"run_dir": str(run_dir), **result, "checkpoint_update": meta.get("update")}
