"""IPPO and MAPPO policies: an actor per agent and a critic, independent or centralised.

The policy is the pluggable piece of the trainer (:class:`marl.policy.Policy`): it owns the
networks, the action distribution, the critic's input and the optimiser of its parameters.
IPPO's critic sees the agent's own observation; MAPPO's sees the global state joined with the
agent's own observation (the "agent-specific global state" of MAPPO, Yu et al. 2022).

Parameters are shared across agents by default (the agent id is in the observation);
``share_params=False`` gives every agent its own parameters (stacked on a leading agent axis and
applied with ``vmap``), for heterogeneous teams.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import optax

from marl.agents.networks import Critic, DiscreteActor, GaussianActor, Torso
from marl.envs.core import EnvSpec
from marl.policy import PolicyInput


def action_dist(out, avail: jax.Array, discrete: bool):
    """The action distribution of a network output: masked categorical logits (``avail``
    marks legal actions), or a diagonal Gaussian from ``(mean, log_std)``."""
    # imported here: distrax loads TensorFlow Probability's JAX substrate (1-2 s), which a
    # relaunch running exported programs (marl/programs.py) never needs
    import distrax

    if discrete:
        return distrax.Categorical(logits=jnp.where(avail, out, -1e9))
    mean, log_std = out
    return distrax.Normal(mean, jnp.exp(log_std))


def logp_entropy(dist, actions: jax.Array, discrete: bool, action_mask: jax.Array):
    """``(log-probability, entropy)`` per agent; for Gaussians summed over the action
    dimensions that exist (``action_mask``; padded dimensions do not count)."""
    if discrete:
        return dist.log_prob(actions), dist.entropy()
    return (dist.log_prob(actions) * action_mask).sum(-1), (dist.entropy() * action_mask).sum(-1)


@dataclass(frozen=True)
class NetworkConfig:
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "tanh"
    recurrent: bool = False
    gru_features: int = 64


class ActorCriticPolicy:
    """Actor-critic policy for IPPO (``centralised=False``) and MAPPO (``centralised=True``)."""

    def __init__(
        self,
        spec: EnvSpec,
        *,
        centralised: bool,
        network: NetworkConfig,
        share_params: bool = True,
        lr: float = 5e-4,
        critic_lr: float | None = None,
        max_grad_norm: float = 0.5,
        anneal_lr: bool = True,
        total_updates: int = 1,
        updates_per_step: int = 1,
    ):
        self.spec = spec
        self.centralised = centralised
        self.share_params = share_params
        self.recurrent = network.recurrent
        self.hidden_size = network.gru_features if network.recurrent else 1
        torso = dict(
            hidden=tuple(network.hidden),
            activation=network.activation,
            recurrent=network.recurrent,
            gru_features=network.gru_features,
        )
        if spec.action_type == "discrete":
            self.actor = DiscreteActor(spec.num_actions, Torso(**torso))
        else:
            self.actor = GaussianActor(spec.num_actions, Torso(**torso))
        self.critic = Critic(Torso(**torso))
        self._action_mask = jnp.asarray(spec.action_mask())
        self._lr = (lr, critic_lr if critic_lr is not None else lr)
        self._max_grad_norm = max_grad_norm
        self._anneal = anneal_lr
        # the schedule counts optimiser steps: epochs x minibatches per update
        self._total_steps = max(1, total_updates * updates_per_step)

    # ------------------------------------------------------------------ inputs
    def critic_features(self, inp: PolicyInput) -> jax.Array:
        """``[..., E, A, F]`` critic input."""
        if not self.centralised:
            return inp.obs
        state = jnp.broadcast_to(
            inp.state[..., None, :], (*inp.obs.shape[:-1], inp.state.shape[-1])
        )
        return jnp.concatenate([state, inp.obs], axis=-1)

    # ------------------------------------------------------------------ params
    def init(self, key: jax.Array) -> dict[str, Any]:
        """Parameters ``{"actor": ..., "critic": ...}`` (stacked per agent if not shared)."""
        A = self.spec.num_agents
        obs = jnp.zeros((1, 1, self.spec.obs_dim))
        crit = jnp.zeros(
            (1, 1, self.spec.obs_dim + (self.spec.state_dim if self.centralised else 0))
        )
        first = jnp.zeros((1, 1), bool)
        h = jnp.zeros((1, self.hidden_size))
        k_a, k_c = jax.random.split(key)

        def init_one(k_a, k_c):
            return {
                "actor": self.actor.init(k_a, h, obs, first),
                "critic": self.critic.init(k_c, h, crit, first),
            }

        if self.share_params:
            return init_one(k_a, k_c)
        # A loop, not vmap: vmapped initialisation of the GRU hangs XLA:CPU (jax 0.10.2).
        ka, kc = jax.random.split(k_a, A), jax.random.split(k_c, A)
        return jax.tree.map(lambda *x: jnp.stack(x), *[init_one(ka[i], kc[i]) for i in range(A)])

    def initial_hidden(self, num_envs: int) -> tuple[jax.Array, jax.Array]:
        z = jnp.zeros((num_envs, self.spec.num_agents, self.hidden_size))
        return z, z

    def optimizer(self) -> optax.GradientTransformation:
        """Adam with gradient clipping, one per parameter group (actor, critic), with linear
        learning-rate annealing when asked."""

        def group(lr):
            sched = optax.linear_schedule(lr, 0.0, self._total_steps) if self._anneal else lr
            return optax.chain(
                optax.clip_by_global_norm(self._max_grad_norm), optax.adam(sched, eps=1e-5)
            )

        labels = {"actor": "actor", "critic": "critic"}
        return optax.multi_transform(
            {"actor": group(self._lr[0]), "critic": group(self._lr[1])},
            lambda params: {k: labels[k] for k in params},
        )

    # ------------------------------------------------------------------ apply
    def _apply(self, module, params, hidden, x, first):
        """Apply ``module`` to ``x [T, E, A, F]`` with episode starts ``first [T, E]``."""
        T, E, A = x.shape[:3]
        first = jnp.broadcast_to(first[..., None], (T, E, A))
        if self.share_params:
            h, out = module.apply(
                params, hidden.reshape(E * A, -1), x.reshape(T, E * A, -1), first.reshape(T, E * A)
            )
            return h.reshape(E, A, -1), jax.tree.map(
                lambda o: o.reshape(T, E, A, *o.shape[2:]), out
            )
        f = jax.vmap(module.apply, in_axes=(0, 1, 2, 2), out_axes=(1, 2))
        return f(params, hidden, x, first)

    def _dist(self, out, avail):
        return action_dist(out, avail, self.spec.action_type == "discrete")

    def _logp_entropy(self, dist, actions):
        return logp_entropy(dist, actions, self.spec.action_type == "discrete", self._action_mask)

    def act(self, params, hidden, inp: PolicyInput, key: jax.Array, greedy: bool = False, ctx=None):
        """One step for ``inp`` with a time axis of 1: returns
        ``(hidden, actions [1, E, A(, nA)], logp [1, E, A], value [1, E, A])``."""
        h_a, h_c = hidden
        h_a, out = self._apply(self.actor, params["actor"], h_a, inp.obs, inp.first)
        h_c, value = self._apply(
            self.critic, params["critic"], h_c, self.critic_features(inp), inp.first
        )
        dist = self._dist(out, inp.avail_actions)
        if greedy:
            actions = dist.mode()
        else:
            actions = dist.sample(seed=key)
        if self.spec.action_type == "discrete":
            actions = actions.astype(jnp.int32)
        logp, _ = self._logp_entropy(dist, actions)
        return (h_a, h_c), actions, logp, value

    def evaluate(self, params, hidden, inp: PolicyInput, actions: jax.Array, ctx=None):
        """Teacher-forced pass over a whole ``[T, E, A]`` sequence from ``hidden``:
        ``(logp, entropy, value)``, each ``[T, E, A]`` (deterministic: ``ctx`` is unused)."""
        h_a, h_c = hidden
        _, out = self._apply(self.actor, params["actor"], h_a, inp.obs, inp.first)
        _, value = self._apply(
            self.critic, params["critic"], h_c, self.critic_features(inp), inp.first
        )
        logp, entropy = self._logp_entropy(self._dist(out, inp.avail_actions), actions)
        return logp, entropy, value
