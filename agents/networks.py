"""Actor and critic networks (Flax linen), time-major.

Every network takes ``(hidden, x [T, B, F], first [T, B])`` and returns ``(hidden, out [T, B,
...])``: feed-forward torsos ignore ``hidden`` and ``first``; the GRU torso resets its hidden
state where ``first`` is True (the observation starts an episode). During rollouts ``T == 1``;
in training the whole ``[T, ...]`` sequence goes through in one pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_ACT = {"tanh": nn.tanh, "relu": nn.relu, "gelu": nn.gelu}


def _dense(features: int, scale: float = np.sqrt(2.0)) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=nn.initializers.orthogonal(scale),
        bias_init=nn.initializers.constant(0.0),
    )


class ResetGRU(nn.Module):
    """A GRU cell scanned over time that restarts from zeros where ``first`` is True."""

    features: int

    @nn.compact
    def __call__(self, hidden: jax.Array, x: jax.Array, first: jax.Array):
        cell = nn.GRUCell(self.features, kernel_init=nn.initializers.orthogonal(1.0))

        def step(cell, h, inputs):
            xt, ft = inputs
            h = jnp.where(ft[:, None], jnp.zeros_like(h), h)
            h, y = cell(h, xt)
            return h, y

        if x.shape[0] == 1:
            # one step (rollouts): no scan. A length-1 scan nested in the rollout's scan under
            # vmap over seeds hangs XLA:CPU (jax 0.10.2); the direct call is also cheaper.
            h, y = step(cell, hidden, (x[0], first[0]))
            return h, y[None]
        scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False})
        return scan(cell, hidden, (x, first))


class Torso(nn.Module):
    """Dense layers, optionally followed by a GRU (``recurrent``)."""

    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    recurrent: bool = False
    gru_features: int = 64

    @nn.compact
    def __call__(self, hidden, x, first):
        act = _ACT[self.activation]
        layers = list(self.hidden)
        if self.recurrent:
            x = act(_dense(layers[0])(x))
            hidden, x = ResetGRU(self.gru_features)(hidden, x, first)
            layers = layers[1:]
        for n in layers:
            x = act(_dense(n)(x))
        return hidden, x


class DiscreteActor(nn.Module):
    """Logits over ``num_actions`` (masking is applied by the policy)."""

    num_actions: int
    torso: Torso

    @nn.compact
    def __call__(self, hidden, x, first):
        hidden, h = self.torso(hidden, x, first)
        return hidden, _dense(self.num_actions, 0.01)(h)


class GaussianActor(nn.Module):
    """Mean of a diagonal Gaussian and a state-independent log standard deviation."""

    action_dim: int
    torso: Torso
    init_log_std: float = -0.5

    @nn.compact
    def __call__(self, hidden, x, first):
        hidden, h = self.torso(hidden, x, first)
        mean = _dense(self.action_dim, 0.01)(h)
        log_std = self.param(
            "log_std", nn.initializers.constant(self.init_log_std), (self.action_dim,)
        )
        return hidden, (mean, jnp.broadcast_to(log_std, mean.shape))


class Critic(nn.Module):
    """A scalar value."""

    torso: Torso

    @nn.compact
    def __call__(self, hidden, x, first):
        hidden, h = self.torso(hidden, x, first)
        return hidden, _dense(1, 1.0)(h)[..., 0]


class MLP(nn.Module):
    """Dense layers with the activation, then a linear output of ``out`` features
    (orthogonal initialisation with ``out_scale``, small for policy logits)."""

    hidden: Sequence[int]
    out: int
    activation: str = "tanh"
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        act = _ACT[self.activation]
        for n in self.hidden:
            x = act(_dense(n)(x))
        return _dense(self.out, self.out_scale)(x)
