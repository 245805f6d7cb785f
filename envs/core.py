"""The array view shared by every environment kind: :class:`EnvSpec` and :class:`TimeStep`.

Whatever the environment (pure-JAX or PettingZoo), an algorithm sees the same arrays. For one
environment copy, with ``A`` agents (``spec.agents`` order), ``D`` padded observation features,
``nA`` padded actions and ``S`` global-state features:

=================  ==============  =====================================================
field              shape / dtype   meaning
=================  ==============  =====================================================
obs                [A, D] f32      observation after the step (the next episode's first
                                   one when ``episode_done``); zero for absent agents;
                                   padded with zeros to ``D``; agent-id one-hot last
avail_actions      [A, nA] bool    legal discrete actions (all True for continuous);
                                   padding actions are False
state              [S] f32         global state (the environment's own, else the
                                   documented construction in ``spec.state_source``)
reward             [A] f32         reward of the step just taken
done               [A] bool        the agent's part of the episode ended with this step
                                   (terminated, truncated, died or left)
episode_done       [] bool         the episode ended with this step; the copy auto-reset
truncated          [] bool         the episode ended because of its time limit
alive              [A] bool        the agent is present in ``obs`` (acts next step)
episode_return     [A] f32         per-agent undiscounted return of the episode that
                                   ended with this step (valid where ``episode_done``)
episode_length     [] i32          its length in steps (valid where ``episode_done``)
episode_won        [] bool         it was won (only where ``spec.has_win``)
=================  ==============  =====================================================

Batched environments put the copy axis first: ``[env, agent, ...]``; a rollout adds time in
front: ``[time, env, agent, ...]``. Actions are ``int32 [.., A]`` (discrete) or
``float32 [.., A, nA]`` (continuous, ``nA`` the padded action dimension).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np

ActionType = Literal["discrete", "continuous"]


class TimeStep(NamedTuple):
    """One step of the array view (see the module docstring for shapes)."""

    obs: Any
    avail_actions: Any
    state: Any
    reward: Any
    done: Any
    episode_done: Any
    truncated: Any
    alive: Any
    episode_return: Any
    episode_length: Any
    episode_won: Any


@dataclass(frozen=True)
class EntityLayout:
    """How an observation splits into entities, for size-agnostic policies (MRA).

    Every agent's observation is ``[self | descriptor | entities | entity mask]``: its own
    features (``self_dim``), the game descriptor (``descriptor_dim``: e.g. the agent count
    over 10 in the population environments, the same for every agent of a copy),
    ``max_entities`` slots of ``entity_dim`` features each (other agents, landmarks; absent
    slots are zero) and one presence flag per slot. ``descriptors`` lists the descriptors of
    the games the environment plays, in its game order.
    """

    self_dim: int
    descriptor_dim: int
    entity_dim: int
    max_entities: int
    descriptors: tuple[tuple[float, ...], ...] = ()

    @property
    def obs_dim(self) -> int:
        return self.self_dim + self.descriptor_dim + self.max_entities * (self.entity_dim + 1)

    def split(self, obs: Any) -> tuple[Any, Any, Any, Any]:
        """``obs [..., obs_dim]`` -> ``(self [..., ds], descriptor [..., dd], entities
        [..., M, de], mask [..., M] bool)`` (jax or numpy arrays)."""
        a = self.self_dim
        b = a + self.descriptor_dim
        c = b + self.max_entities * self.entity_dim
        ents = obs[..., b:c].reshape(*obs.shape[:-1], self.max_entities, self.entity_dim)
        return obs[..., :a], obs[..., a:b], ents, obs[..., c:] > 0.5

    def shapes(self) -> tuple[int, int, int]:
        """What a size-agnostic policy's parameters depend on."""
        return self.self_dim, self.descriptor_dim, self.entity_dim


@dataclass(frozen=True)
class AttackLayout:
    """How an attack environment's global state splits (:mod:`marl.attack`), for the
    attacker's centralised learners (AMI's victim model and oracle).

    The state is ``[base state | victims' actions at t [A, nA] (one-hot, or the action
    vectors when ``continuous``; the adversary's row zero) | every agent's legal actions
    [A, nA] (all ones for continuous actions) | victims visible to the adversary [A]]``,
    where ``A`` counts the whole team, the adversary's slot included.
    """

    base_state_dim: int
    num_agents: int
    num_actions: int
    slot: int
    continuous: bool = False

    @property
    def state_dim(self) -> int:
        return self.base_state_dim + 2 * self.num_agents * self.num_actions + self.num_agents

    def split(self, state: Any) -> tuple[Any, Any, Any, Any]:
        """``state [..., state_dim]`` -> ``(base [..., S], victims' actions [..., A, nA],
        legal actions [..., A, nA] bool, visible [..., A])``."""
        A, n = self.num_agents, self.num_actions
        b = self.base_state_dim
        lead = state.shape[:-1]
        acts = state[..., b : b + A * n].reshape(*lead, A, n)
        avail = state[..., b + A * n : b + 2 * A * n].reshape(*lead, A, n) > 0.5
        return state[..., :b], acts, avail, state[..., b + 2 * A * n :]


@dataclass(frozen=True)
class EnvSpec:
    """Static description of an environment's array view.

    Attributes:
        name: registry name (or a description for an unregistered environment).
        agents: agent names, in array order.
        obs_sizes: flat observation size of each agent before padding.
        agent_id: whether a one-hot agent id is appended to each observation.
        action_type: ``"discrete"`` or ``"continuous"``.
        action_sizes: number of actions (discrete) or action dimension (continuous) per agent.
        state_dim: size of the global state.
        state_source: ``"env"`` when the environment provides it, ``"concat_obs"`` when it is
            the concatenation of every agent's unpadded observation (agent order, no ids).
        max_steps: episode time limit, if known.
        has_win: whether ``episode_won`` is meaningful.
        turn_based: whether only one agent acts at a time (others have a single legal action
            that is ignored).
        action_low: per-agent lower bounds ``[A, nA]`` (continuous only).
        action_high: per-agent upper bounds ``[A, nA]`` (continuous only).
        agent_classes: groups of agents (e.g. adversaries / good agents), by name.
        entities: the entity layout of the observation, where it has one (population
            environments, :mod:`marl.envs.population`).
        games: the names of the games a population environment plays (in its game order).
        attack: the state layout of an attack environment (:class:`AttackLayout`).
    """

    name: str
    agents: tuple[str, ...]
    obs_sizes: tuple[int, ...]
    agent_id: bool
    action_type: ActionType
    action_sizes: tuple[int, ...]
    state_dim: int
    state_source: Literal["env", "concat_obs"]
    max_steps: int | None = None
    has_win: bool = False
    turn_based: bool = False
    action_low: tuple[tuple[float, ...], ...] | None = None
    action_high: tuple[tuple[float, ...], ...] | None = None
    agent_classes: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    entities: EntityLayout | None = None
    games: tuple[str, ...] = ()
    attack: AttackLayout | None = None

    @property
    def num_agents(self) -> int:
        return len(self.agents)

    @property
    def raw_obs_dim(self) -> int:
        """Largest observation size, before the agent id."""
        return max(self.obs_sizes)

    @property
    def obs_dim(self) -> int:
        """Padded observation size ``D`` (agent id included)."""
        return self.raw_obs_dim + (self.num_agents if self.agent_id else 0)

    @property
    def num_actions(self) -> int:
        """Padded action count (discrete) or action dimension (continuous), ``nA``."""
        return max(self.action_sizes)

    @property
    def heterogeneous(self) -> bool:
        """Agents differ in observation size or action count."""
        return len(set(self.obs_sizes)) > 1 or len(set(self.action_sizes)) > 1

    def obs_mask(self) -> np.ndarray:
        """``[A, D]`` bool: which observation features are real (not padding)."""
        mask = np.zeros((self.num_agents, self.obs_dim), dtype=bool)
        for i, size in enumerate(self.obs_sizes):
            mask[i, :size] = True
        if self.agent_id:
            mask[:, self.raw_obs_dim :] = True
        return mask

    def action_mask(self) -> np.ndarray:
        """``[A, nA]`` bool: which actions (or action dimensions) exist for each agent."""
        mask = np.zeros((self.num_agents, self.num_actions), dtype=bool)
        for i, size in enumerate(self.action_sizes):
            mask[i, :size] = True
        return mask

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly summary (used by ``marl envs``)."""
        return {
            "name": self.name,
            "agents": list(self.agents),
            "obs": [self.num_agents, self.obs_dim],
            "obs_sizes": list(self.obs_sizes),
            "action_type": self.action_type,
            "actions": [self.num_agents, self.num_actions],
            "action_sizes": list(self.action_sizes),
            "state": [self.state_dim],
            "state_source": self.state_source,
            "max_steps": self.max_steps,
            "has_win": self.has_win,
            "turn_based": self.turn_based,
            **({"games": list(self.games)} if self.games else {}),
            **(
                {"entities": dataclasses.asdict(self.entities)} if self.entities is not None else {}
            ),
        }
