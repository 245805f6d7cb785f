"""Resource occupation: a pure-JAX cooperative particle game whose agent count varies.

``N`` agents and ``N`` resources on the MPE plane (the MRA paper's resource-occupation
family, written here from its description). Resources differ in size: a resource of radius
``r`` is worth ``r / mean(radii)`` while at least one agent stands on it, and its occupants
share that value, so two agents on one resource earn what one would. The team's reward is
shared: every agent receives ``(value occupied - 0.1 * sum_r min_i |p_i - c_r|) / N`` per
step, the second term a dense guide (as in ``simple_spread``), and dividing by ``N`` keeps
returns of different team sizes on one scale (1 per step is every resource held).

Observation of agent ``i``: own velocity (2), own position (2), then per resource its
position relative to ``i`` and its radius (``N x 3``), then the other agents' relative
positions (``(N - 1) x 2``, in the order ``i+1, i+2, ...`` wrapping around). Actions: no-op,
left, right, down, up (MPE's discrete movement, same physics constants).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxmarl.environments import spaces
from jaxmarl.environments.multi_agent_env import MultiAgentEnv

_DT, _DAMPING, _ACCEL = 0.1, 0.25, 5.0
_MOVES = jnp.array([[0.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]])


@struct.dataclass
class OccupyState:
    pos: jax.Array  # [N, 2]
    vel: jax.Array  # [N, 2]
    res_pos: jax.Array  # [N, 2]
    res_size: jax.Array  # [N]
    step: jax.Array  # []


class ResourceOccupation(MultiAgentEnv):
    """``N`` agents occupy ``N`` resources of different sizes (see the module docstring)."""

    def __init__(
        self,
        num_agents: int = 4,
        max_steps: int = 25,
        min_size: float = 0.1,
        max_size: float = 0.3,
        shaping: float = 0.1,
    ):
        if not isinstance(num_agents, int) or num_agents < 1:
            raise ValueError(f"num_agents must be a positive integer, got {num_agents!r}")
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        super().__init__(num_agents)
        self.max_steps = int(max_steps)
        self.min_size, self.max_size, self.shaping = float(min_size), float(max_size), shaping
        n = num_agents
        self.obs_size = 4 + 3 * n + 2 * (n - 1)
        self.action_spaces = {a: spaces.Discrete(5) for a in self.agents}
        self.observation_spaces = {
            a: spaces.Box(-jnp.inf, jnp.inf, (self.obs_size,)) for a in self.agents
        }

    def reset(self, key: jax.Array):
        k_pos, k_res, k_size = jax.random.split(key, 3)
        n = self.num_agents
        state = OccupyState(
            pos=jax.random.uniform(k_pos, (n, 2), minval=-1.0, maxval=1.0),
            vel=jnp.zeros((n, 2)),
            res_pos=jax.random.uniform(k_res, (n, 2), minval=-0.8, maxval=0.8),
            res_size=jax.random.uniform(k_size, (n,), minval=self.min_size, maxval=self.max_size),
            step=jnp.array(0, jnp.int32),
        )
        return self.get_obs(state), state

    def get_obs(self, state: OccupyState) -> dict[str, jax.Array]:
        n = self.num_agents

        def one(i):
            res = jnp.concatenate([state.res_pos - state.pos[i], state.res_size[:, None]], -1)
            others = jnp.roll(state.pos - state.pos[i], -i - 1, axis=0)[: n - 1]
            return jnp.concatenate([state.vel[i], state.pos[i], res.ravel(), others.ravel()])

        obs = jax.vmap(one)(jnp.arange(n))
        return {a: obs[i] for i, a in enumerate(self.agents)}

    def team_reward(self, state: OccupyState) -> jax.Array:
        """The shared per-agent reward of a state (module docstring)."""
        d = jnp.linalg.norm(state.pos[:, None, :] - state.res_pos[None, :, :], axis=-1)  # [i, r]
        occupied = (d < state.res_size[None, :]).any(0)
        value = (state.res_size / state.res_size.mean() * occupied).sum()
        return (value - self.shaping * d.min(0).sum()) / self.num_agents

    def step_env(self, key: jax.Array, state: OccupyState, actions: dict[str, jax.Array]):
        a = jnp.stack([jnp.asarray(actions[ag], jnp.int32) for ag in self.agents])
        vel = state.vel * (1 - _DAMPING) + _MOVES[a] * _ACCEL * _DT
        state = state.replace(pos=state.pos + vel * _DT, vel=vel, step=state.step + 1)
        r = self.team_reward(state)
        done = state.step >= self.max_steps
        rewards = {ag: r for ag in self.agents}
        dones = {ag: done for ag in self.agents} | {"__all__": done}
        return self.get_obs(state), state, rewards, dones, {}

    @property
    def name(self) -> str:
        return f"occupy_{self.num_agents}"
