"""Population-varying games: one array environment over variants of a family that differ in
their number of agents (``population/spread`` over ``mpe/simple_spread`` with N = 3, 4, 5,
``population/occupy`` over ``occupy``), for policies that generalise across agent counts.

The environment copies are split into one contiguous block per game (as even as the count
allows), so every update trains on every game ("mixed"; the reference MRA code keeps one
buffer per game, which is the same data). Each game's copies step with that variant's own
:class:`~marl.envs.jax_env.JaxArrayEnv`; their time steps are rewritten into one layout,
padded to ``max_agents``:

- observations in the entity layout (:class:`~marl.envs.core.EntityLayout`): own velocity
  and position, the game descriptor ``N / 10`` (independent of the padding), one slot per
  landmark (``max_agents`` slots) and per other agent (``max_agents - 1`` slots), each
  ``[dx, dy, size, is_landmark, is_agent]``, and the slots' presence flags. A flat-input
  policy (MAPPO) reads the same vector: landmark and agent slots sit at fixed places, padded
  with zeros;
- agents past the game's ``N`` are absent (``alive`` false, zero observation and reward,
  only action 0 legal; the PPO loss masks them) and report the team's mean return as their
  ``episode_return``, so means over the agent axis are the team's;
- the global state is every agent's observation in this layout, concatenated.

``game_ids(num_envs)`` says which game each copy plays (per-game metrics in the trainer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from marl.envs.core import EntityLayout, EnvSpec, TimeStep
from marl.errors import ConfigError

ENTITY_DIM = 5  # dx, dy, size, is_landmark, is_agent
SELF_DIM = 4  # velocity, position
COUNT_SCALE = 10.0  # the game descriptor is N / 10, whatever the padding


def _split_spread(obs: jax.Array, n: int):
    """``mpe/simple_spread`` observations ``[..., raw]`` -> own features, landmarks
    ``[..., n, 3]`` (relative position, size 0) and other agents ``[..., n - 1, 2]``."""
    lm = obs[..., 4 : 4 + 2 * n].reshape(*obs.shape[:-1], n, 2)
    lm = jnp.concatenate([lm, jnp.zeros((*lm.shape[:-1], 1))], -1)
    others = obs[..., 4 + 2 * n : 4 + 2 * n + 2 * (n - 1)].reshape(*obs.shape[:-1], n - 1, 2)
    return obs[..., :4], lm, others


def _split_occupy(obs: jax.Array, n: int):
    """``occupy`` observations -> own features, resources ``[..., n, 3]`` (relative position,
    radius), other agents ``[..., n - 1, 2]``."""
    res = obs[..., 4 : 4 + 3 * n].reshape(*obs.shape[:-1], n, 3)
    others = obs[..., 4 + 3 * n : 4 + 3 * n + 2 * (n - 1)].reshape(*obs.shape[:-1], n - 1, 2)
    return obs[..., :4], res, others


# family -> (registry name of one variant, its agent-count keyword, splitter, allowed N)
FAMILIES: dict[str, tuple[str, str, Callable, range]] = {
    "spread": ("mpe/simple_spread", "N", _split_spread, range(2, 9)),
    "occupy": ("occupy", "N", _split_occupy, range(2, 13)),
}


class PopulationEnv:
    """Several agent-count variants of one family as one batched array environment (see the
    module docstring). Only the batched protocol (``reset_batch``/``step_batch``) exists:
    a single copy plays a single game."""

    def __init__(
        self,
        family: str,
        agents: Any = (3, 4, 5),
        max_agents: int | None = None,
        *,
        agent_id: bool = False,
        **kwargs: Any,
    ):
        from marl.envs.registry import make_array_env

        if family not in FAMILIES:
            raise ConfigError(f"unknown population family {family!r} ({', '.join(FAMILIES)})")
        name, n_key, self._split, allowed = FAMILIES[family]
        if isinstance(agents, int):
            agents = [agents]
        agents = list(agents or [])
        if not agents or any(not isinstance(n, int) or isinstance(n, bool) for n in agents):
            raise ConfigError(f"population/{family}: agents must be a list of agent counts")
        bad = [n for n in agents if n not in allowed]
        if bad:
            raise ConfigError(
                f"population/{family}: agents={bad[0]} is outside the family's variants "
                f"({allowed.start}..{allowed.stop - 1})"
            )
        if len(set(agents)) != len(agents):
            raise ConfigError(f"population/{family}: agents lists a count twice: {agents}")
        max_agents = max(agents) if max_agents is None else max_agents
        if not isinstance(max_agents, int) or max_agents < max(agents):
            raise ConfigError(
                f"population/{family}: max_agents={max_agents!r} must be an integer of at "
                f"least the largest agent count ({max(agents)})"
            )
        if agent_id:
            raise ConfigError(
                f"population/{family}: agents have no fixed ids across games; set "
                "env.agent_id=false"
            )
        self.family, self.counts, self.max_agents = family, tuple(agents), max_agents
        self.envs = [make_array_env(name, agent_id=False, **{n_key: n}, **kwargs) for n in agents]
        specs = [e.spec for e in self.envs]
        A = max_agents
        layout = EntityLayout(
            SELF_DIM,
            1,
            ENTITY_DIM,
            2 * A - 1,
            tuple((n / COUNT_SCALE,) for n in agents),
        )
        D = layout.obs_dim
        self.layout = layout
        self.spec = EnvSpec(
            name=f"population/{family}",
            agents=tuple(f"agent_{i}" for i in range(A)),
            obs_sizes=(D,) * A,
            agent_id=False,
            action_type="discrete",
            action_sizes=(specs[0].num_actions,) * A,
            state_dim=A * D,
            state_source="concat_obs",
            max_steps=specs[0].max_steps,
            has_win=False,
            entities=layout,
            games=tuple(f"N={n}" for n in agents),
        )

    # ---------------------------------------------------------------- games
    @property
    def num_games(self) -> int:
        return len(self.envs)

    def group_sizes(self, num_envs: int) -> list[int]:
        """Copies per game: contiguous blocks, as even as ``num_envs`` allows."""
        G = self.num_games
        if num_envs < G:
            raise ConfigError(
                f"{self.spec.name} plays {G} games: it needs at least {G} environment copies "
                f"(got {num_envs})"
            )
        return [num_envs // G + (g < num_envs % G) for g in range(G)]

    def game_ids(self, num_envs: int) -> np.ndarray:
        """``[num_envs]`` the game (index into ``spec.games``) each copy plays."""
        return np.repeat(np.arange(self.num_games), self.group_sizes(num_envs))

    # ---------------------------------------------------------------- layout
    def _canonical(self, g: int, ts: TimeStep) -> TimeStep:
        """A game's batched time step ``[n, N, ...]`` in the shared padded layout."""
        n, A, N = ts.obs.shape[0], self.max_agents, self.counts[g]
        own, lm, others = self._split(ts.obs, N)
        one = jnp.ones((*lm.shape[:-1], 1))
        lm = jnp.concatenate([lm, one, 0 * one], -1)
        o1 = jnp.ones((*others.shape[:-1], 1))
        others = jnp.concatenate([others, 0 * o1, 0 * o1, o1], -1)
        lm = jnp.pad(lm, ((0, 0), (0, 0), (0, A - N), (0, 0)))
        others = jnp.pad(others, ((0, 0), (0, 0), (0, A - N), (0, 0)))
        mask = np.zeros((2 * A - 1,), np.float32)
        mask[:N] = 1.0
        mask[A : A + N - 1] = 1.0
        ents = jnp.concatenate([lm, others], -2).reshape(n, N, -1)
        desc = jnp.full((n, N, 1), N / COUNT_SCALE)
        obs = jnp.concatenate([own, desc, ents, jnp.broadcast_to(mask, (n, N, 2 * A - 1))], -1)
        obs = obs * ts.alive[..., None]
        pad = A - N

        def agents(x, value=0):
            return jnp.pad(x, ((0, 0), (0, pad)) + ((0, 0),) * (x.ndim - 2), constant_values=value)

        obs = agents(obs)
        avail = agents(ts.avail_actions, False)
        avail = avail.at[:, N:, 0].set(True)
        team = ts.episode_return.mean(-1, keepdims=True)
        ret = jnp.concatenate([ts.episode_return, jnp.broadcast_to(team, (n, pad))], -1)
        return ts._replace(
            obs=obs,
            avail_actions=avail,
            state=obs.reshape(n, -1),
            reward=agents(ts.reward),
            done=agents(ts.done, True),
            alive=agents(ts.alive, False),
            episode_return=ret,
        )

    def _join(self, parts: list[TimeStep]) -> TimeStep:
        return jax.tree.map(lambda *x: jnp.concatenate(x, 0), *parts)

    # ---------------------------------------------------------------- protocol
    def reset_batch(self, key: jax.Array, num_envs: int) -> tuple[tuple, TimeStep]:
        """``num_envs`` copies (blocks per game); the state is one tuple entry per game."""
        keys = jax.random.split(key, self.num_games)
        out = [
            e.reset_batch(keys[g], n)
            for g, (e, n) in enumerate(zip(self.envs, self.group_sizes(num_envs), strict=True))
        ]
        states = tuple(s for s, _ in out)
        return states, self._join([self._canonical(g, ts) for g, (_, ts) in enumerate(out)])

    def step_batch(
        self, key: jax.Array, state: tuple, actions: jax.Array
    ) -> tuple[tuple, TimeStep]:
        """Step every copy (actions ``[env, max_agents]``; absent agents' are ignored)."""
        keys = jax.random.split(key, self.num_games)
        states, parts, start = [], [], 0
        for g, (e, s) in enumerate(zip(self.envs, state, strict=True)):
            n = s.episode_length.shape[0]
            a = actions[start : start + n, : self.counts[g]]
            s, ts = e.step_batch(keys[g], s, a)
            states.append(s)
            parts.append(self._canonical(g, ts))
            start += n
        return tuple(states), self._join(parts)

    def random_actions(self, key: jax.Array, avail_actions: jax.Array) -> jax.Array:
        return self.envs[0].random_actions(key, avail_actions)
