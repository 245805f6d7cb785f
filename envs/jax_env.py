"""The array view of a pure-JAX (JaxMARL-protocol) environment.

:class:`JaxArrayEnv` turns any ``MultiAgentEnv`` (dicts per agent) into the arrays of
:mod:`marl.envs.core` for one copy: ``reset(key) -> (state, TimeStep)`` and
``step(key, state, actions) -> (state, TimeStep)``, both pure, jittable and vmappable
(vmap them over keys for ``[env, agent, ...]`` batches, or use :meth:`JaxArrayEnv.reset_batch`
and :meth:`JaxArrayEnv.step_batch`).

It steps with the environment's ``step_env`` (no built-in reset) and resets itself, so it sees
the terminal state (to score a win) and can restart from a given state (:meth:`restart_from`,
used to clone a state and roll out many copies from it).

Global state: the environment's own where it has one (``get_world_state`` or an observation
entry ``"world_state"``, as in SMAX), else the concatenation of every agent's unpadded, flat
observation in agent order (``spec.state_source == "concat_obs"``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxmarl.environments import spaces as jspaces
from jaxmarl.environments.multi_agent_env import MultiAgentEnv

from marl.envs.core import EnvSpec, TimeStep
from marl.errors import ConfigError


@struct.dataclass
class ArrayEnvState:
    """State of one copy: the environment's state and the running episode statistics."""

    env_state: Any
    episode_return: jax.Array  # [A]
    episode_length: jax.Array  # []


def _space_info(space: Any, agent: str) -> tuple[str, int, tuple[float, ...], tuple[float, ...]]:
    if isinstance(space, jspaces.Discrete):
        return "discrete", int(space.n), (), ()
    if isinstance(space, jspaces.Box):
        dim = int(np.prod(space.shape))
        low = np.broadcast_to(np.asarray(space.low, np.float32), space.shape).reshape(-1)
        high = np.broadcast_to(np.asarray(space.high, np.float32), space.shape).reshape(-1)
        return "continuous", dim, tuple(map(float, low)), tuple(map(float, high))
    raise ConfigError(
        f"agent {agent}: action space {type(space).__name__} is not supported "
        "(Discrete and Box are)"
    )


class JaxArrayEnv:
    """Array view of a JaxMARL-protocol environment (one copy; vmap for more).

    Args:
        env: a ``MultiAgentEnv``.
        agent_id: append a one-hot agent id to each observation.
        win: ``win(env, terminal_env_state) -> bool`` where the environment has a win.
        alive: ``alive(env, env_state) -> [A] bool`` where an episode may start from a state
            with dead agents (:meth:`restart_from`); all alive otherwise.
        name: the name reported in the spec.
    """

    def __init__(
        self,
        env: MultiAgentEnv,
        *,
        agent_id: bool = True,
        win=None,
        alive=None,
        name: str | None = None,
    ):
        self.env = env
        self.agents: tuple[str, ...] = tuple(env.agents)
        self._win = win
        self._alive = alive
        obs_sizes = tuple(int(np.prod(env.observation_space(a).shape)) for a in self.agents)
        infos = [_space_info(env.action_space(a), a) for a in self.agents]
        kinds = {i[0] for i in infos}
        if len(kinds) > 1:
            raise ConfigError("agents mix discrete and continuous actions; not supported")
        action_type = kinds.pop()
        action_sizes = tuple(i[1] for i in infos)
        low = high = None
        if action_type == "continuous":
            n = max(action_sizes)
            low = tuple(tuple(i[2]) + (0.0,) * (n - len(i[2])) for i in infos)
            high = tuple(tuple(i[3]) + (0.0,) * (n - len(i[3])) for i in infos)

        # Where the environment keeps its global state and its legal actions.
        self._world_state_fn = getattr(env, "get_world_state", None)
        cls = type(env)
        if cls.get_avail_actions is not MultiAgentEnv.get_avail_actions:
            self._avail_fn = env.get_avail_actions
        elif hasattr(env, "get_legal_moves"):
            self._avail_fn = env.get_legal_moves
        else:
            self._avail_fn = None
        if self._world_state_fn is not None:
            shape = jax.eval_shape(
                lambda k: self._world_state_fn(env.reset(k)[1]), jax.random.PRNGKey(0)
            ).shape
            state_dim = int(np.prod(shape))
            state_source = "env"
        else:
            state_dim, state_source = sum(obs_sizes), "concat_obs"

        # `episode_limit`: the true episode length where it differs from the env's own counter.
        max_steps = getattr(env, "episode_limit", getattr(env, "max_steps", None))
        classes = {}
        try:
            classes = {k: tuple(v) for k, v in dict(env.agent_classes).items()}
        except (NotImplementedError, AttributeError, TypeError):
            pass
        self.spec = EnvSpec(
            name=name or getattr(env, "_marl_name", None) or env.name,
            agents=self.agents,
            obs_sizes=obs_sizes,
            agent_id=agent_id,
            action_type=action_type,
            action_sizes=action_sizes,
            state_dim=state_dim,
            state_source=state_source,
            max_steps=int(max_steps) if max_steps is not None else None,
            has_win=win is not None,
            turn_based=hasattr(env, "get_legal_moves"),
            action_low=low,
            action_high=high,
            agent_classes=classes,
        )
        self._action_mask = jnp.asarray(self.spec.action_mask())
        if action_type == "continuous":
            self._low = jnp.asarray(low, jnp.float32)
            self._high = jnp.asarray(high, jnp.float32)

    # ---------------------------------------------------------------- conversions
    def _stack_obs(self, obs: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """Padded ``[A, D]`` observations and the ``concat_obs`` state."""
        spec = self.spec
        flat = [jnp.reshape(obs[a], (-1,)).astype(jnp.float32) for a in self.agents]
        padded = jnp.stack([jnp.pad(f, (0, spec.raw_obs_dim - f.shape[0])) for f in flat])
        if spec.agent_id:
            padded = jnp.concatenate([padded, jnp.eye(spec.num_agents, dtype=jnp.float32)], -1)
        concat = jnp.concatenate(flat) if spec.state_source == "concat_obs" else None
        return padded, concat

    def _global_state(self, env_state: Any, concat: jax.Array | None) -> jax.Array:
        if self._world_state_fn is None:
            return concat
        return jnp.reshape(self._world_state_fn(env_state), (-1,)).astype(jnp.float32)

    def _avail(self, env_state: Any) -> jax.Array:
        if self._avail_fn is None:
            return self._action_mask
        avail = self._avail_fn(env_state)
        rows = [
            jnp.pad(
                jnp.asarray(avail[a], bool).reshape(-1),
                (0, self.spec.num_actions - self.spec.action_sizes[i]),
            )
            for i, a in enumerate(self.agents)
        ]
        return jnp.stack(rows) & self._action_mask

    def actions_to_dict(self, actions: jax.Array) -> dict[str, jax.Array]:
        """``[A]`` int (discrete) or ``[A, nA]`` float (continuous, clipped to the bounds)
        actions as the environment's dict, padding dropped."""
        if self.spec.action_type == "discrete":
            return {a: actions[i].astype(jnp.int32) for i, a in enumerate(self.agents)}
        actions = jnp.clip(actions, self._low, self._high)
        return {a: actions[i, : self.spec.action_sizes[i]] for i, a in enumerate(self.agents)}

    def _first(self, env_state: Any, obs: dict[str, jax.Array]) -> tuple[ArrayEnvState, TimeStep]:
        A = self.spec.num_agents
        padded, concat = self._stack_obs(obs)
        alive = (
            jnp.ones((A,), bool)
            if self._alive is None
            else jnp.asarray(self._alive(self.env, env_state), bool)
        )
        ts = TimeStep(
            obs=padded * alive[:, None],
            avail_actions=self._avail(env_state),
            state=self._global_state(env_state, concat),
            reward=jnp.zeros((A,), jnp.float32),
            done=jnp.zeros((A,), bool),
            episode_done=jnp.array(False),
            truncated=jnp.array(False),
            alive=alive,
            episode_return=jnp.zeros((A,), jnp.float32),
            episode_length=jnp.array(0, jnp.int32),
            episode_won=jnp.array(False),
        )
        state = ArrayEnvState(env_state, jnp.zeros((A,), jnp.float32), jnp.array(0, jnp.int32))
        return state, ts

    # ---------------------------------------------------------------- protocol
    def reset(self, key: jax.Array) -> tuple[ArrayEnvState, TimeStep]:
        """Start an episode."""
        obs, env_state = self.env.reset(key)
        return self._first(env_state, obs)

    def restart_from(self, env_state: Any) -> tuple[ArrayEnvState, TimeStep]:
        """Start an episode from a given environment state (cloning, search, tests)."""
        return self._first(env_state, self.env.get_obs(env_state))

    def step(
        self, key: jax.Array, state: ArrayEnvState, actions: jax.Array
    ) -> tuple[ArrayEnvState, TimeStep]:
        """One step; on episode end the copy restarts and the finished episode's statistics
        come in ``episode_return`` / ``episode_length`` / ``episode_won``."""
        key_step, key_reset = jax.random.split(key)
        obs, env_state, reward, dones, _ = self.env.step_env(
            key_step, state.env_state, self.actions_to_dict(actions)
        )
        reward = jnp.stack([jnp.asarray(reward[a], jnp.float32) for a in self.agents])
        done_agents = jnp.stack([jnp.asarray(dones[a], bool) for a in self.agents])
        episode_done = jnp.asarray(dones["__all__"], bool)
        done_agents = done_agents | episode_done
        ep_return = state.episode_return + reward
        ep_length = state.episode_length + 1
        won = (
            jnp.asarray(self._win(self.env, env_state), bool)
            if self._win is not None
            else jnp.array(False)
        )
        truncated = episode_done & (
            ep_length >= self.spec.max_steps if self.spec.max_steps else jnp.array(False)
        )
        if self._win is not None:
            truncated = truncated & ~won

        # Restart finished copies (computed every step: branch-free under vmap).
        obs_re, env_state_re = self.env.reset(key_reset)
        env_state = jax.tree.map(
            lambda r, s: jnp.where(episode_done, r, s), env_state_re, env_state
        )
        obs = {a: jnp.where(episode_done, obs_re[a], obs[a]) for a in self.agents}
        padded, concat = self._stack_obs(obs)
        alive = jnp.where(episode_done, True, ~done_agents)
        ts = TimeStep(
            obs=padded * alive[:, None],
            avail_actions=self._avail(env_state),
            state=self._global_state(env_state, concat),
            reward=reward,
            done=done_agents,
            episode_done=episode_done,
            truncated=truncated,
            alive=alive,
            episode_return=ep_return,
            episode_length=ep_length,
            episode_won=won & episode_done,
        )
        zero = jnp.zeros_like(ep_return)
        new_state = ArrayEnvState(
            env_state,
            jnp.where(episode_done, zero, ep_return),
            jnp.where(episode_done, 0, ep_length),
        )
        return new_state, ts

    # ---------------------------------------------------------------- batches
    def reset_batch(self, key: jax.Array, num_envs: int) -> tuple[ArrayEnvState, TimeStep]:
        """``num_envs`` independent copies, arrays ``[env, agent, ...]``."""
        return jax.vmap(self.reset)(jax.random.split(key, num_envs))

    def step_batch(
        self, key: jax.Array, state: ArrayEnvState, actions: jax.Array
    ) -> tuple[ArrayEnvState, TimeStep]:
        """Step every copy of a batch (actions ``[env, A]`` or ``[env, A, nA]``)."""
        n = state.episode_length.shape[0]
        return jax.vmap(self.step)(jax.random.split(key, n), state, actions)

    def random_actions(self, key: jax.Array, avail_actions: jax.Array) -> jax.Array:
        """Uniform legal actions for ``avail_actions [..., A, nA]``."""
        if self.spec.action_type == "discrete":
            # One uniform draw per agent picks the k-th legal action: cheaper than a Gumbel
            # draw per action (this sampler is in every random rollout and search).
            avail = avail_actions.astype(bool)
            n = avail.sum(-1)
            k = jnp.floor(jax.random.uniform(key, n.shape) * n).astype(jnp.int32)
            a = jnp.sum(jnp.cumsum(avail, -1) <= k[..., None], -1).astype(jnp.int32)
            return jnp.where(n > 0, a, 0)  # no legal action: 0, as the env's no-op
        u = jax.random.uniform(key, avail_actions.shape)
        return self._low + u * (self._high - self._low)
