"""What the trainer needs from a policy.

A policy owns its networks, its action distribution and the optimiser of its parameters, so
new methods plug in without touching the trainer: an autoregressive decoder (MAT, CommFormer)
decodes agent by agent inside :meth:`Policy.act` and runs one teacher-forced pass in
:meth:`Policy.evaluate`; a learnable communication graph gets its own parameter group and
schedule from :meth:`Policy.optimizer`; a latent-conditioned policy (MRA) keeps its latent in
the hidden state; frozen co-players (AMI) are parameters the optimiser does not update.

Shapes: the trainer calls ``act`` with a time axis of 1 and ``evaluate`` with the whole
rollout, ``[T, E, A, ...]`` (time, environment copy, agent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import jax
import optax

if TYPE_CHECKING:  # importing marl.envs imports jaxmarl, which starts JAX's backend
    from marl.envs.core import EnvSpec


class PolicyInput(NamedTuple):
    """What a policy sees at each step, ``[T, E, ...]``."""

    obs: jax.Array  # [T, E, A, D]
    state: jax.Array  # [T, E, S]
    avail_actions: jax.Array  # [T, E, A, nA]
    first: jax.Array  # [T, E] the observation starts an episode (resets recurrent state)
    alive: jax.Array  # [T, E, A]


class TrainContext(NamedTuple):
    """What the PPO core hands to :meth:`Policy.evaluate` in training (``None`` elsewhere):
    fresh randomness per minibatch (Gumbel samples of a communication graph, gates) and the
    index of the PPO update being made (warm-up and freezing schedules)."""

    key: jax.Array
    update: jax.Array  # int32 scalar, from 0


class Policy(Protocol):
    """The pluggable piece of the trainer (see the module docstring)."""

    spec: EnvSpec

    def init(self, key: jax.Array) -> Any:
        """Fresh parameters."""

    def initial_hidden(self, num_envs: int) -> Any:
        """Recurrent state for ``num_envs`` copies (a pytree with leading ``[E, A]``)."""

    def optimizer(self) -> optax.GradientTransformation:
        """The optimiser of the parameters (parameter groups may have their own)."""

    def act(
        self,
        params: Any,
        hidden: Any,
        inp: PolicyInput,
        key: jax.Array,
        greedy: bool = False,
        ctx: TrainContext | None = None,
    ) -> tuple[Any, jax.Array, jax.Array, jax.Array]:
        """``(hidden, actions, logp, value)`` for one step (``T == 1``). Training rollouts
        pass ``ctx`` (its ``update`` is the update the rollout feeds), so that a policy whose
        structure follows a schedule (CommFormer's graph warm-up) acts as it will be trained;
        evaluation passes none."""

    def evaluate(
        self,
        params: Any,
        hidden: Any,
        inp: PolicyInput,
        actions: jax.Array,
        ctx: TrainContext | None = None,
    ) -> tuple[jax.Array, ...]:
        """``(logp, entropy, value)`` of ``actions`` over a whole ``[T, E, A]`` rollout, and
        optionally a fourth item, a dict of extra scalars: they are logged with the losses,
        and the one named ``"aux_loss"`` is added to the PPO loss (a communication penalty,
        say). ``ctx`` is given in training only; without it the pass is deterministic."""
