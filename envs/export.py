"""Export a pure-JAX (JaxMARL-protocol) environment as a PettingZoo ``ParallelEnv``.

:func:`to_pettingzoo` wraps a registered environment (or any JaxMARL ``MultiAgentEnv``) so that
code written for PettingZoo (evaluation scripts, other libraries' trainers, the PettingZoo API
tests) can drive it: numpy observations, python rewards and flags, gymnasium spaces, agents
removed from :attr:`~JaxParallelEnv.agents` once they are done.

Randomness follows one key schedule, so a run can be replayed on the JaxMARL environment
itself: ``reset(seed=s)`` starts from ``key = jax.random.PRNGKey(s)``, splits it with
``key, sub = jax.random.split(key)`` and resets with ``sub``; every step splits the same way
and calls ``env.step_env(sub, state, actions)`` (``step_env``, not ``step``: no automatic
reset, so the terminal observation comes back and the episode ends with ``agents == []``).
``reset()`` without a seed draws the seed from a numpy generator (seeded by the last explicit
seed, else from the operating system).

Observations, action masks and :meth:`~JaxParallelEnv.state` are numpy arrays read straight
from the device buffers (float32 observations, int8 masks); they are read-only, copy them to
modify them in place.
"""

from __future__ import annotations

import functools
from typing import Any

import gymnasium
import jax
import jax.numpy as jnp
import numpy as np
from jaxmarl.environments import spaces as jspaces
from jaxmarl.environments.multi_agent_env import MultiAgentEnv
from pettingzoo import ParallelEnv

from marl.errors import ActionError, ConfigError

__all__ = ["JaxParallelEnv", "to_pettingzoo"]


def to_pettingzoo(
    env: str | MultiAgentEnv, *, render_mode: str | None = None, **make_kwargs: Any
) -> JaxParallelEnv:
    """A PettingZoo ``ParallelEnv`` that runs the pure-JAX environment ``env``.

    Args:
        env: a registry name (built with ``marl.envs.registry.make(env, **make_kwargs)``) or a
            JaxMARL ``MultiAgentEnv`` instance.
        render_mode: must be ``None`` (the exported environments do not render).
        **make_kwargs: keyword arguments of the registered environment (only with a name).

    Raises:
        UnknownNameError: unknown registry name or keyword.
        ConfigError: a bad keyword value, ``make_kwargs`` with an instance, an unsupported
            space, or a render mode.
    """
    if isinstance(env, str):
        name = env
        env = _make(env, make_kwargs)
    else:
        if make_kwargs:
            raise ConfigError(
                f"to_pettingzoo: keyword arguments {sorted(make_kwargs)} only apply to a "
                "registry name, not to an environment instance"
            )
        if not isinstance(env, MultiAgentEnv):
            raise ConfigError(
                "to_pettingzoo: expected a registry name or a JaxMARL MultiAgentEnv, got "
                f"{type(env).__name__}"
            )
        name = _env_name(env)
    return JaxParallelEnv(env, name=name, render_mode=render_mode)


def _make(name: str, kwargs: dict[str, Any]) -> MultiAgentEnv:
    """``registry.make``, sharing one environment object (and so one compilation) between
    exports of the same name and keywords. JaxMARL environments hold no episode state."""
    try:
        key = (name, tuple(sorted(kwargs.items())))
        hash(key)
    except TypeError:  # unhashable keyword values: build a fresh one
        from marl.envs.registry import make

        return make(name, **kwargs)
    return _make_cached(*key)


@functools.lru_cache(maxsize=16)
def _make_cached(name: str, items: tuple[tuple[str, Any], ...]) -> MultiAgentEnv:
    from marl.envs.registry import make

    return make(name, **dict(items))


def _env_name(env: MultiAgentEnv) -> str:
    name = getattr(env, "_marl_name", None)
    if name is None:
        try:
            name = env.name
        except Exception:  # noqa: BLE001 - some environments' name property is broken
            name = type(env).__name__
    return str(name)


def _shape(shape: Any) -> tuple[int, ...]:
    """JaxMARL spaces give shapes as tuples or plain integers."""
    if np.ndim(shape) == 0:
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _to_gym_space(space: Any, what: str) -> gymnasium.Space:
    if isinstance(space, jspaces.Discrete):
        return gymnasium.spaces.Discrete(int(space.n))
    if isinstance(space, jspaces.MultiDiscrete):
        return gymnasium.spaces.MultiDiscrete(np.asarray(space.num_categories, np.int64))
    if isinstance(space, jspaces.Box):
        shape = _shape(space.shape)
        low = np.broadcast_to(np.asarray(space.low, np.float32), shape).copy()
        high = np.broadcast_to(np.asarray(space.high, np.float32), shape).copy()
        return gymnasium.spaces.Box(low=low, high=high, shape=shape, dtype=np.float32)
    raise ConfigError(
        f"{what}: space {type(space).__name__} is not supported (Discrete, MultiDiscrete and "
        "Box are)"
    )


def _key_from_seed(seed: Any) -> jax.Array:
    """``jax.random.PRNGKey(seed)``; seeds of 2**32 and more keep their high bits, which
    ``PRNGKey`` drops without 64-bit mode (so they would all collide with small seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or not 0 <= seed < 2**64:
        raise ConfigError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    seed = int(seed)
    if seed < 2**32:
        return jax.random.PRNGKey(seed)
    key = jax.random.PRNGKey(0)
    return jnp.asarray([seed >> 32, seed & 0xFFFFFFFF], dtype=key.dtype)


def _strong(tree: Any) -> Any:
    """Drop weak types from a state's leaves. JaxMARL's reset and step_env disagree on them
    (e.g. MPE's ``done``, Hanabi's ``score``), which would compile the step twice."""
    return jax.tree.map(lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), tree)


class _Kernel:
    """The jitted reset / step / world-state functions of one environment object.

    Built once per environment object and kept on it, so every exported copy of the same
    environment (e.g. ``to_pettingzoo("smax/3m")`` twice) shares one compilation.
    """

    def __init__(self, env: MultiAgentEnv):
        self.env = env
        self.agents = tuple(env.agents)
        # Legal-action masks, found as in the array view (JaxArrayEnv).
        if type(env).get_avail_actions is not MultiAgentEnv.get_avail_actions:
            self.avail_fn = env.get_avail_actions
        elif hasattr(env, "get_legal_moves"):
            self.avail_fn = env.get_legal_moves
        else:
            self.avail_fn = None
        ws = getattr(env, "get_world_state", None)
        self.reset = jax.jit(self._reset)
        self.step = jax.jit(self._step)
        self.world_state = jax.jit(self._world_state) if ws is not None else None
        self.state_dim: int | None = None
        if ws is not None:
            _, s0 = jax.eval_shape(env.reset, jax.random.PRNGKey(0))
            self.state_dim = int(np.prod(jax.eval_shape(self._world_state, s0).shape))

    @staticmethod
    def of(env: MultiAgentEnv) -> _Kernel:
        # The object's own __dict__, not getattr: wrappers such as SMAX's forward unknown
        # attributes to the environment they wrap, whose kernel would be the wrong one.
        kernel = getattr(env, "__dict__", {}).get("_marl_export_kernel")
        if kernel is None:
            kernel = _Kernel(env)
            try:
                env._marl_export_kernel = kernel  # noqa: SLF001 - cache on the environment
            except (AttributeError, TypeError):  # frozen or slotted: no sharing, still works
                pass
        return kernel

    def _host_part(self, obs: dict, env_state: Any) -> tuple[dict, dict]:
        """Observations of the agents (extras such as ``world_state`` dropped) and masks."""
        obs = {a: jnp.asarray(obs[a], jnp.float32) for a in self.agents}
        masks = {}
        if self.avail_fn is not None:
            avail = self.avail_fn(env_state)
            masks = {a: jnp.asarray(avail[a]).astype(jnp.int8) for a in self.agents}
        return obs, masks

    def _reset(self, key: jax.Array):
        key, sub = jax.random.split(key)
        obs, env_state = self.env.reset(sub)
        return key, _strong(env_state), self._host_part(obs, env_state)

    def _step(self, key: jax.Array, env_state: Any, actions: dict):
        key, sub = jax.random.split(key)
        obs, env_state, rewards, dones, _ = self.env.step_env(sub, env_state, actions)
        obs, masks = self._host_part(obs, env_state)
        rew = jnp.stack([jnp.asarray(rewards[a], jnp.float32) for a in self.agents])
        all_done = jnp.asarray(dones["__all__"], bool)
        done = jnp.stack([jnp.asarray(dones[a], bool) for a in self.agents]) | all_done
        return key, _strong(env_state), (obs, masks, rew, done, all_done)

    def _world_state(self, env_state: Any) -> jax.Array:
        return jnp.reshape(self.env.get_world_state(env_state), (-1,)).astype(jnp.float32)


class JaxParallelEnv(ParallelEnv):
    """PettingZoo ``ParallelEnv`` over a JaxMARL ``MultiAgentEnv`` (see :func:`to_pettingzoo`).

    Attributes:
        env: the wrapped JaxMARL environment.
        env_state: the current JaxMARL state (``None`` before the first reset).
        state_space: the space of :meth:`state`.
    """

    def __init__(
        self, env: MultiAgentEnv, *, name: str | None = None, render_mode: str | None = None
    ):
        if render_mode is not None:
            raise ConfigError(
                f"render_mode {render_mode!r} is not supported; exported environments have no "
                "render modes"
            )
        self.env = env
        self.render_mode = None
        self.metadata = {
            "name": name or _env_name(env),
            "render_modes": [],
            "is_parallelizable": True,
        }
        self.possible_agents: list[str] = list(env.agents)
        self.agents: list[str] = []
        # Built once: PettingZoo requires the same space object on every call.
        self.observation_spaces = {
            a: _to_gym_space(env.observation_space(a), f"observation space of {a}")
            for a in self.possible_agents
        }
        self.action_spaces = {
            a: _to_gym_space(env.action_space(a), f"action space of {a}")
            for a in self.possible_agents
        }
        # The time limit, for telling truncation from termination: `episode_limit` where the
        # registry records the true episode length (JaxMARL's MPE runs max_steps + 1 steps),
        # else the environment's `max_steps`.
        max_steps = getattr(env, "episode_limit", getattr(env, "max_steps", None))
        self._max_steps = int(max_steps) if max_steps is not None else None

        # Jitted once per environment object (shared by its exported copies); fixed input
        # dtypes and pytree structure keep it at one compilation each.
        self._kernel = _Kernel.of(env)
        state_dim = self._kernel.state_dim
        if state_dim is None:
            state_dim = sum(int(np.prod(s.shape)) for s in self.observation_spaces.values())
        self.state_space = gymnasium.spaces.Box(
            low=-np.inf, high=np.inf, shape=(state_dim,), dtype=np.float32
        )

        self._np_rng = np.random.default_rng()
        self._key: jax.Array | None = None
        self.env_state: Any = None
        self._t = 0
        self._last_obs: dict[str, np.ndarray] = {}
        self._masks: dict[str, np.ndarray] = {}
        self.max_cycles: int | None = None  # set by PettingZoo's API test; unused

    # ---------------------------------------------------------------- spaces
    def observation_space(self, agent: str) -> gymnasium.Space:
        return self.observation_spaces[agent]

    def action_space(self, agent: str) -> gymnasium.Space:
        return self.action_spaces[agent]

    # ---------------------------------------------------------------- API
    def reset(self, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``options`` is accepted and ignored."""
        if seed is not None:
            key = _key_from_seed(seed)
            self._np_rng = np.random.default_rng(int(seed))
        else:
            key = jax.random.PRNGKey(int(self._np_rng.integers(0, 2**31 - 1)))
        key, self.env_state, host = self._kernel.reset(key)
        self._key = key
        obs, masks = jax.device_get(host)
        self._t = 0
        self._last_obs = obs
        self._masks = masks
        self.agents = list(self.possible_agents)
        return dict(obs), self._infos(self.agents)

    def step(self, actions: dict[str, Any]):
        """One step of every live agent; agents done after it leave :attr:`agents`.

        Raises:
            ActionError: before reset or after the episode ended, an action for an agent that
                is not live, a live agent without an action, a discrete action that is not an
                integer in range, or a continuous action of the wrong shape.
        """
        if self._key is None:
            raise ActionError("step() called before reset()")
        if not self.agents:
            raise ActionError("the episode is over (no live agents); call reset()")
        jax_actions = self._check_actions(actions)
        self._key, self.env_state, host = self._kernel.step(self._key, self.env_state, jax_actions)
        obs, masks, rew, done, all_done = jax.device_get(host)
        self._t += 1
        self._last_obs = obs
        self._masks = masks
        time_up = self._max_steps is not None and self._t >= self._max_steps
        live = self.agents
        index = {a: i for i, a in enumerate(self.possible_agents)}
        observations = {a: obs[a] for a in live}
        rewards = {a: float(rew[index[a]]) for a in live}
        dones = {a: bool(done[index[a]]) or bool(all_done) for a in live}
        truncations = {a: dones[a] and time_up for a in live}
        terminations = {a: dones[a] and not time_up for a in live}
        infos = self._infos(live)
        self.agents = [] if all_done else [a for a in live if not dones[a]]
        return observations, rewards, terminations, truncations, infos

    def state(self) -> np.ndarray:
        """The global state: the environment's ``get_world_state`` where it has one, else every
        agent's flat observation concatenated in ``possible_agents`` order."""
        if self.env_state is None:
            raise ActionError("state() called before reset()")
        if self._kernel.world_state is not None:
            return np.asarray(jax.device_get(self._kernel.world_state(self.env_state)))
        return np.concatenate([self._last_obs[a].reshape(-1) for a in self.possible_agents])

    def render(self) -> None:
        """The exported environments do not render (``metadata["render_modes"] == []``)."""
        return None

    def close(self) -> None:
        self.agents = []
        self.env_state = None
        self._key = None

    # ---------------------------------------------------------------- helpers
    def _infos(self, agents: list[str]) -> dict[str, dict[str, Any]]:
        if not self._masks:
            return {a: {} for a in agents}
        return {a: {"action_mask": self._masks[a]} for a in agents}

    def _default_action(self, agent: str) -> np.ndarray:
        """Action sent for an agent that is no longer live (the environment ignores it)."""
        space = self.action_spaces[agent]
        if isinstance(space, gymnasium.spaces.Discrete):
            mask = self._masks.get(agent)
            return np.int32(int(np.argmax(mask)) if mask is not None and mask.any() else 0)
        if isinstance(space, gymnasium.spaces.MultiDiscrete):
            return np.zeros(space.shape, np.int32)
        return np.clip(np.zeros(space.shape, np.float32), space.low, space.high)

    def _check_actions(self, actions: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(actions, dict):
            raise ActionError(
                f"actions must be a dict from agent to action, got {type(actions).__name__}"
            )
        live = set(self.agents)
        for agent in actions:
            if agent not in live:
                what = "is done" if agent in self.possible_agents else "is not an agent of"
                raise ActionError(
                    f"action for {agent!r}, which {what} this environment "
                    f"(live agents: {self.agents})"
                )
        missing = [a for a in self.agents if a not in actions]
        if missing:
            raise ActionError(f"no action for live agent(s) {missing}")
        out = {}
        for agent in self.possible_agents:
            if agent in actions:
                out[agent] = self._check_one(agent, actions[agent])
            else:
                out[agent] = self._default_action(agent)
        return out

    def _check_one(self, agent: str, action: Any) -> np.ndarray:
        space = self.action_spaces[agent]
        if isinstance(space, gymnasium.spaces.Discrete):
            a = np.asarray(action)
            if a.size != 1 or not np.issubdtype(a.dtype, np.integer):
                raise ActionError(
                    f"agent {agent!r}: discrete action must be one integer in "
                    f"[0, {space.n}), got {action!r}"
                )
            value = int(a.reshape(()))
            if not 0 <= value < space.n:
                raise ActionError(f"agent {agent!r}: action {value} is out of range [0, {space.n})")
            return np.int32(value)
        if isinstance(space, gymnasium.spaces.MultiDiscrete):
            a = np.asarray(action)
            if a.shape != space.shape or not np.issubdtype(a.dtype, np.integer):
                raise ActionError(
                    f"agent {agent!r}: action must be integers of shape {space.shape}, got "
                    f"{action!r}"
                )
            if (a < 0).any() or (a >= space.nvec).any():
                raise ActionError(
                    f"agent {agent!r}: action {a.tolist()} is out of range {space.nvec.tolist()}"
                )
            return a.astype(np.int32)
        try:
            a = np.asarray(action, np.float32)
        except (TypeError, ValueError) as err:
            raise ActionError(f"agent {agent!r}: action is not numeric: {action!r}") from err
        if a.shape != space.shape:
            raise ActionError(
                f"agent {agent!r}: action must have shape {space.shape}, got shape {a.shape}"
            )
        return a
