"""CommFormer's learnable communication graph and temporal gate (Hu et al., ICLR 2024, and
the extension arXiv 2411.00382), as pure functions the MAT policy (:mod:`marl.agents.mat`)
calls.

Graphs are ``[N, N]`` with receivers in rows and senders in columns. A mask ``M`` enters
attention twice: its hard support decides which logits are kept (the others are -inf) and its
soft values multiply the attention weights after the softmax, which is the only gradient path
from the loss to the graph parameters ``alpha``.

Choices against the reference code (``charleshsc/CommFormer``), as the spec asks:
- the self loop is set, not added (``M`` has a diagonal of 1, never 2), and the ``k`` senders
  of a receiver are chosen among the other agents, so every row has exactly ``k`` senders
  plus the self loop;
- relation embeddings are indexed like the mask (receiver row, sender column), not transposed,
  and attention is scaled by ``1/sqrt(head_dim)`` throughout (:mod:`marl.agents.mat`);
- in the decoder the token of agent ``j``'s action is gated by the edges of agent ``j`` (the
  reference gates decoder position ``j``, which holds agent ``j - 1``'s action), so that
  information moves along graph paths only and the self-loop-only graph really is no
  communication (:func:`decoder_masks`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def num_senders(num_agents: int, sparsity: float) -> int:
    """Senders per receiver: ``k = max(int(N * S), 1)``, at most ``N - 1`` (``S = 1`` is the
    full graph); ``S = 0`` gives ``k = 0``, the self-loop-only graph (no communication)."""
    if sparsity <= 0 or num_agents < 2:
        return 0
    return min(max(int(num_agents * sparsity), 1), num_agents - 1)


def _with_self_loop(a: jax.Array) -> jax.Array:
    eye = jnp.eye(a.shape[-1], dtype=a.dtype)
    return a * (1 - eye) + eye


def topk_graph(
    alpha: jax.Array, k: int, key: jax.Array | None = None, temperature: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """``(M, support)``: the k-hot graph of ``alpha [N, N]`` with a straight-through
    estimator and the self loop set. With ``key``: Gumbel top-k (training), one sample;
    without: the deterministic top-k (rollouts, evaluation).

    ``M = y_hard - stop_gradient(y_soft) + y_soft`` off the diagonal, where ``y_soft`` is the
    row softmax of ``(alpha + g) / temperature`` over the other agents and ``y_hard`` its
    top-k indicator: the forward value is exactly 0/1, the gradient that of ``y_soft``.
    """
    n = alpha.shape[-1]
    eye = jnp.eye(n, dtype=bool)
    if k == 0:
        return jnp.eye(n, dtype=alpha.dtype), eye
    logits = alpha
    if key is not None:
        logits = logits + jax.random.gumbel(key, alpha.shape, alpha.dtype)
    logits = jnp.where(eye, -jnp.inf, logits / temperature)
    y_soft = jax.nn.softmax(logits, axis=-1)
    # ranked by the logits, not y_soft: a saturated softmax ties the self loop with senders
    _, idx = jax.lax.top_k(logits, k)
    y_hard = jax.nn.one_hot(idx, n, dtype=alpha.dtype).sum(-2)
    m = y_hard - jax.lax.stop_gradient(y_soft) + y_soft
    return _with_self_loop(m), (y_hard > 0) | eye


def soft_graph(alpha: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The warm-up mask: the raw ``alpha`` with the self loop set, every edge kept."""
    return _with_self_loop(alpha), jnp.ones(alpha.shape, bool)


def gate(
    logit: jax.Array, key: jax.Array | None = None, threshold: float = 0.5, temperature: float = 1.0
) -> jax.Array:
    """The receive gate ``g in {0, 1}`` of each agent from its logit: a hard Gumbel-sigmoid
    (logistic noise) with a straight-through estimator when ``key`` is given (training), else
    ``sigmoid(logit) > threshold`` (rollouts, evaluation)."""
    if key is None:
        return (jax.nn.sigmoid(logit) > threshold).astype(logit.dtype)
    u = jax.random.uniform(key, logit.shape, logit.dtype, 1e-6, 1 - 1e-6)
    soft = jax.nn.sigmoid((logit + jnp.log(u) - jnp.log1p(-u)) / temperature)
    hard = (soft > 0.5).astype(logit.dtype)
    return hard - jax.lax.stop_gradient(soft) + soft


def gated(m: jax.Array, support: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-copy masks ``[B, N, N]`` from a graph ``[N, N]`` and gates ``g [B, N]``: a receiver
    whose gate is 0 keeps only its self loop."""
    eye = jnp.eye(m.shape[-1], dtype=m.dtype)
    gi = g[..., :, None]
    m = gi * m + (1 - gi) * eye
    support = jnp.where(gi > 0, support, eye > 0)
    return m, support


def decoder_masks(
    m: jax.Array, support: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """The decoder's masks over positions, ``((M, support) of its self-attention, (M,
    support) of its attention from the encoder)``, each ``[..., N, N]``, from an agent graph
    ``[..., N, N]``.

    Decoder position 0 holds the start token and position ``p >= 1`` agent ``p - 1``'s
    action, so both masks index the graph by the agent a token belongs to:

    - attention from the encoder: receiver ``i`` sees position ``p <= i`` (causal) where
      ``p == 0`` or the graph has the edge ``i <- p - 1``;
    - self-attention: position ``q`` (agent ``q - 1``'s token) mixes position ``p <= q`` where
      ``p == 0`` or the graph has the edge ``q - 1 <- p - 1``, what agent ``q - 1`` receives.

    Information therefore moves along graph paths only. The full graph gives MAT's causal
    masks; the self-loop-only graph leaves each agent the start token alone.
    """
    n = m.shape[-1]
    causal = jnp.tril(jnp.ones((n, n), m.dtype))

    def both(g, ones, first):
        cross = jnp.concatenate([ones, g[..., :, : n - 1]], axis=-1)
        rows = jnp.concatenate([ones[..., : n - 1, :], g[..., : n - 1, : n - 1]], axis=-1)
        own = jnp.concatenate([jnp.broadcast_to(first, (*g.shape[:-2], 1, n)), rows], axis=-2)
        return own, cross

    ones = jnp.ones((*m.shape[:-1], 1), m.dtype)
    first = jax.nn.one_hot(0, n, dtype=m.dtype)
    (sm, cm), (ss, cs) = both(m, ones, first), both(support, ones > 0, first > 0)
    return (sm * causal, ss & (causal > 0)), (cm * causal, cs & (causal > 0))
