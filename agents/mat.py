"""The Multi-Agent Transformer (MAT, Wen et al. 2022) and CommFormer on top of it.

One policy, :class:`MATPolicy`, covers both: an encoder over the agents' observations with a
value per agent, and a decoder over the shifted actions that decodes agent by agent. Its
attention is masked by a communication graph (:mod:`marl.agents.commformer`):

- ``graph="full"``: every agent attends to every agent (MAT, ``algo=mat``);
- ``graph="learned"``: CommFormer's learnable ``N x N`` graph with per-receiver top-k
  sparsity, trained bi-level with the network on the same PPO loss (``algo=commformer``);
- ``graph="none"``: the self-loop-only graph, no communication (same code, same budget).

``gating=True`` adds the temporal receive gate of the extension. Rollouts decode agent by
agent inside ``jit`` (a ``lax.scan`` over agents); training is one teacher-forced pass.

Network -> graph -> policy (act, evaluate, optimiser), top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from marl.agents.actor_critic import action_dist, logp_entropy
from marl.agents.commformer import decoder_masks, gate, gated, num_senders, soft_graph, topk_graph
from marl.envs.core import EnvSpec
from marl.policy import PolicyInput, TrainContext
from marl.ppo import epoch_groups

GRAPHS = ("full", "learned", "none")


# ----------------------------------------------------------------------------- network
class GraphAttention(nn.Module):
    """Multi-head attention masked by a graph, with relation embeddings (edge / no edge)
    added to queries and keys: ``(q_i + r_ij) . (k_j + r_ij) / sqrt(head_dim)``, logits
    outside ``support`` dropped, and the softmax weights multiplied by the soft ``mask``."""

    dim: int
    heads: int

    @nn.compact
    def __call__(self, q_in, kv_in, mask, support):
        # q_in, kv_in [B, N, d]; mask [B, N, N] float; support [B, N, N] bool
        B, N, _ = q_in.shape
        hd = self.dim // self.heads

        def proj(x, name):
            return nn.Dense(self.dim, name=name)(x).reshape(B, N, self.heads, hd)

        q, k, v = proj(q_in, "query"), proj(kv_in, "key"), proj(kv_in, "value")
        rel = self.param("relation", nn.initializers.normal(0.02), (2, self.heads, hd))
        # r_ij takes one of two values: expand the four products by cases instead of
        # materialising [B, N, N, H, hd]
        e = support[:, None]  # [B, 1, N, N]
        qr = jnp.einsum("bihd,chd->cbhi", q, rel)  # [2, B, H, N]
        kr = jnp.einsum("bjhd,chd->cbhj", k, rel)
        rr = (rel**2).sum(-1)[:, None, :, None, None]  # [2, 1, H, 1, 1]
        logits = (
            jnp.einsum("bihd,bjhd->bhij", q, k)
            + jnp.where(e, qr[1][..., :, None], qr[0][..., :, None])
            + jnp.where(e, kr[1][..., None, :], kr[0][..., None, :])
            + jnp.where(e, rr[1], rr[0])
        ) / np.sqrt(hd)
        w = jax.nn.softmax(jnp.where(e, logits, -1e9), axis=-1) * mask[:, None]
        out = jnp.einsum("bhij,bjhd->bihd", w, v).reshape(B, N, self.dim)
        return nn.Dense(self.dim, name="out")(out)


class _MLP(nn.Module):
    dim: int

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.dim)(nn.gelu(nn.Dense(self.dim)(x)))


class EncodeBlock(nn.Module):
    dim: int
    heads: int

    @nn.compact
    def __call__(self, x, mask, support):
        x = nn.LayerNorm()(x + GraphAttention(self.dim, self.heads)(x, x, mask, support))
        return nn.LayerNorm()(x + _MLP(self.dim)(x))


class DecodeBlock(nn.Module):
    """Masked self-attention over the action tokens, then attention with the encoder's
    representation as queries and the action tokens as keys and values (MAT's order)."""

    dim: int
    heads: int

    @nn.compact
    def __call__(self, x, rep, masks):
        (sm, ss), (cm, cs) = masks  # self-attention, attention from the encoder
        x = nn.LayerNorm()(x + GraphAttention(self.dim, self.heads)(x, x, sm, ss))
        x = nn.LayerNorm()(rep + GraphAttention(self.dim, self.heads)(rep, x, cm, cs))
        return nn.LayerNorm()(x + _MLP(self.dim)(x))


class Head(nn.Module):
    out: int
    dim: int
    scale: float = 0.01

    @nn.compact
    def __call__(self, x):
        x = nn.LayerNorm()(nn.gelu(nn.Dense(self.dim)(x)))
        return nn.Dense(self.out, kernel_init=nn.initializers.orthogonal(self.scale))(x)


class MATNet(nn.Module):
    """Encoder, decoder and heads; the graph masks come from outside."""

    num_agents: int
    action_dim: int  # actions (discrete) or action dimensions (continuous)
    discrete: bool
    dim: int = 64
    heads: int = 1
    blocks: int = 1
    share_heads: bool = False
    gating: bool = False

    def setup(self):
        self.obs_norm = nn.LayerNorm()
        self.obs_embed = nn.Dense(self.dim)
        self.obs_out = nn.LayerNorm()
        self.encoder = [EncodeBlock(self.dim, self.heads) for _ in range(self.blocks)]
        self.value_head = Head(1, self.dim, 1.0)
        self.action_embed = nn.Dense(self.dim, use_bias=False)
        self.action_norm = nn.LayerNorm()
        self.decoder = [DecodeBlock(self.dim, self.heads) for _ in range(self.blocks)]
        if self.share_heads:
            self.policy_head = Head(self.action_dim, self.dim)
        else:  # one head per agent (decoder position), stacked on a leading axis
            self.policy_head = nn.vmap(
                Head,
                in_axes=1,
                out_axes=1,
                variable_axes={"params": 0},
                split_rngs={"params": True},
            )(self.action_dim, self.dim)
        if self.gating:
            self.gate_head = nn.Dense(1)
        if not self.discrete:
            self.log_std = self.param("log_std", nn.initializers.constant(-0.5), (self.action_dim,))

    def embed(self, obs):
        """``[B, N, D] -> [B, N, d]``: the observation embedding (the gate reads it too)."""
        return self.obs_out(nn.gelu(self.obs_embed(self.obs_norm(obs))))

    def gate_logit(self, emb):
        return self.gate_head(emb)[..., 0]

    def encode(self, emb, mask, support):
        """``(value [B, N], representation [B, N, d])``."""
        x = emb
        for block in self.encoder:
            x = block(x, mask, support)
        return self.value_head(x)[..., 0], x

    def decode(self, shifted, rep, masks):
        """Logits (or Gaussian means) ``[B, N, nA]`` of every position from the shifted
        actions ``[B, N, a]``; ``masks`` from :func:`~marl.agents.commformer.decoder_masks`."""
        x = self.action_norm(nn.gelu(self.action_embed(shifted)))
        for block in self.decoder:
            x = block(x, rep, masks)
        return self.policy_head(x)

    def __call__(self, obs, shifted):  # initialisation: every sub-module once
        B, N = obs.shape[:2]
        mask = jnp.ones((B, N, N))
        emb = self.embed(obs)
        if self.gating:
            self.gate_logit(emb)
        _, rep = self.encode(emb, mask, mask > 0)
        return self.decode(shifted, rep, ((mask, mask > 0), (mask, mask > 0)))


# ----------------------------------------------------------------------------- policy
@dataclass(frozen=True)
class GraphConfig:
    mode: str = "full"  # full | learned | none
    sparsity: float = 0.4  # S: k = max(int(N * S), 1) senders per receiver
    lr: float = 1e-4  # Adam on alpha, no clipping
    period: int = 5  # every period-th PPO epoch steps only alpha, the others only the network
    warmup: int = 10  # PPO updates that train on the raw alpha as a soft mask
    freeze: float = 0.0  # > 0: after this fraction of training the graph is frozen (top-k)
    temperature: float = 1.0


@dataclass(frozen=True)
class GateConfig:
    enabled: bool = False
    penalty: float = 0.0  # lambda * mean(g) added to the loss
    threshold: float = 0.5  # evaluation: sigmoid(logit) > threshold


class MATPolicy:
    """MAT / CommFormer behind :class:`marl.policy.Policy`.

    Parameters: ``{"net": ..., "graph": {"alpha": [N, N]}}`` (``graph`` only when learned).
    The graph in rollouts and evaluation is the deterministic top-k of ``alpha``; in training
    it is a Gumbel top-k sample per minibatch, the raw ``alpha`` during the warm-up, and the
    deterministic top-k without gradient once frozen.
    """

    recurrent = False

    def __init__(
        self,
        spec: EnvSpec,
        *,
        dim: int = 64,
        heads: int = 1,
        blocks: int = 1,
        share_heads: bool = False,
        graph: GraphConfig = GraphConfig(),
        gating: GateConfig = GateConfig(),
        lr: float = 5e-4,
        max_grad_norm: float = 10.0,
        anneal_lr: bool = False,
        total_updates: int = 1,
        update_epochs: int = 5,
        num_minibatches: int = 1,
    ):
        if graph.mode not in GRAPHS:
            raise ValueError(f"graph mode {graph.mode!r} is not one of {', '.join(GRAPHS)}")
        if dim % heads:
            raise ValueError(f"embed_dim={dim} is not a multiple of num_heads={heads}")
        self.spec = spec
        self.N = spec.num_agents
        self.discrete = spec.action_type == "discrete"
        self.graph_cfg, self.gate_cfg = graph, gating
        self.k = {
            "full": self.N - 1,
            "none": 0,
            "learned": num_senders(self.N, graph.sparsity),
        }[graph.mode]
        self.learned = graph.mode == "learned" and 0 < self.k
        self.freeze_at = (
            int(graph.freeze * total_updates) if graph.freeze > 0 else np.iinfo(np.int32).max
        )
        self.net = MATNet(
            self.N,
            spec.num_actions,
            self.discrete,
            dim,
            heads,
            blocks,
            share_heads,
            gating.enabled,
        )
        self.token_dim = spec.num_actions + 1 if self.discrete else spec.num_actions
        self._action_mask = jnp.asarray(spec.action_mask())
        self._lr, self._max_grad_norm, self._anneal = lr, max_grad_norm, anneal_lr
        self._epochs, self._minibatches = update_epochs, num_minibatches
        self._total_steps = max(1, total_updates * update_epochs * num_minibatches)

    # ---------------------------------------------------------------- parameters
    def init(self, key: jax.Array) -> dict:
        obs = jnp.zeros((1, self.N, self.spec.obs_dim))
        shifted = jnp.zeros((1, self.N, self.token_dim))
        params = {"net": self.net.init(key, obs, shifted)}
        if self.learned:
            params["graph"] = {"alpha": jnp.ones((self.N, self.N))}
        return params

    def initial_hidden(self, num_envs: int) -> jax.Array:
        return jnp.zeros((num_envs, self.N, 1))  # feed-forward: no recurrent state

    def optimizer(self) -> optax.GradientTransformation:
        """Adam on the network (global-norm clipping, optional annealing) and, for a learned
        graph, Adam on ``alpha``: every ``period``-th PPO epoch steps only the graph, the
        others only the network (the bi-level schedule, :func:`marl.ppo.epoch_groups`)."""
        sched = (
            optax.linear_schedule(self._lr, 0.0, self._total_steps) if self._anneal else self._lr
        )
        net = optax.chain(
            optax.clip_by_global_norm(self._max_grad_norm), optax.adam(sched, eps=1e-5)
        )
        if not self.learned:
            return optax.multi_transform({"net": net}, lambda p: {k: k for k in p})
        period = self.graph_cfg.period
        return epoch_groups(
            {"net": net, "graph": optax.adam(self.graph_cfg.lr)},
            {
                "net": lambda epoch: (epoch + 1) % period != 0,
                "graph": lambda epoch: (epoch + 1) % period == 0,
            },
            lambda p: {k: k for k in p},
            self._minibatches,
        )

    # ---------------------------------------------------------------- the graph
    def graph(
        self, params: dict, ctx: TrainContext | None = None, sample: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """``(M [N, N], support [N, N])``: the deterministic top-k of ``alpha`` without
        ``ctx`` (evaluation); with ``ctx``, the graph of update ``ctx.update``: the raw soft
        ``alpha`` during the warm-up, then a Gumbel top-k sample (``sample``, the training
        pass) or the deterministic top-k (rollouts), without gradient once frozen."""
        n = self.N
        if not self.learned:
            eye = jnp.eye(n, dtype=bool)
            support = jnp.ones((n, n), bool) if self.k == n - 1 else eye
            return support.astype(jnp.float32), support
        alpha = params["graph"]["alpha"]
        exact = topk_graph(alpha, self.k, temperature=self.graph_cfg.temperature)
        if ctx is None:
            return exact
        live = topk_graph(alpha, self.k, ctx.key, self.graph_cfg.temperature) if sample else exact
        warm = soft_graph(alpha)
        frozen = jax.tree.map(jax.lax.stop_gradient, exact)
        in_warmup = ctx.update < self.graph_cfg.warmup
        is_frozen = ctx.update >= self.freeze_at
        pick = lambda a, b, c: jnp.where(in_warmup, a, jnp.where(is_frozen, b, c))  # noqa: E731
        return jax.tree.map(pick, warm, frozen, live)

    def masks(self, params, obs: jax.Array, ctx: TrainContext | None = None, sample: bool = True):
        """The observation embedding, the encoder mask ``(M, support)`` (``[B, N, N]`` each),
        the decoder's masks (:func:`~marl.agents.commformer.decoder_masks`) and the gates
        ``[B, N]`` (ones without gating) of ``obs [B, N, D]``. Gates are sampled
        (straight-through) where the graph is (``ctx`` and ``sample``), thresholded elsewhere."""
        m, support = self.graph(params, ctx, sample)
        emb = self.net.apply(params["net"], obs, method=MATNet.embed)
        B = obs.shape[0]
        if self.gate_cfg.enabled:
            logit = self.net.apply(params["net"], emb, method=MATNet.gate_logit)
            key = jax.random.fold_in(ctx.key, 1) if ctx is not None and sample else None
            g = gate(logit, key, self.gate_cfg.threshold)
        else:
            g = jnp.ones((B, self.N))
        m, support = gated(m, support, g)
        return emb, (m, support), decoder_masks(m, support), g

    # ---------------------------------------------------------------- acting
    def _token(self, actions: jax.Array) -> jax.Array:
        """An action as the decoder's input token: one-hot shifted past the start token."""
        if self.discrete:
            return jax.nn.one_hot(actions + 1, self.token_dim)
        return actions

    def _dist(self, params, out, avail):
        if self.discrete:
            return action_dist(out, avail, True)
        log_std = jnp.broadcast_to(params["net"]["params"]["log_std"], out.shape)
        return action_dist((out, log_std), avail, False)

    def _start(self, batch: int) -> jax.Array:
        """``[B, 1, a]`` start tokens (the one-hot start action, or zeros)."""
        start = jnp.zeros((batch, 1, self.token_dim))
        return start.at[..., 0].set(1.0) if self.discrete else start

    def _flat(self, inp: PolicyInput):
        lead = inp.obs.shape[:-2]
        flat = lambda x: x.reshape(-1, *x.shape[len(lead) :])  # noqa: E731
        unflat = lambda x: x.reshape(*lead, *x.shape[1:])  # noqa: E731
        return lead, unflat, flat(inp.obs), flat(inp.avail_actions)

    def act(
        self,
        params,
        hidden,
        inp: PolicyInput,
        key: jax.Array,
        greedy: bool = False,
        ctx: TrainContext | None = None,
    ):
        """Decode agent by agent (a ``lax.scan`` over agents, each step a full decoder pass
        over the shifted actions so far): ``(hidden, actions, logp, value)``, ``[1, E, A]``.
        The graph is deterministic; in training rollouts (``ctx``) it follows the warm-up."""
        lead, unflat, obs, avail = self._flat(inp)
        B, N = obs.shape[:2]
        emb, (m, s), dmasks, _ = self.masks(params, obs, ctx, sample=False)
        value, rep = self.net.apply(params["net"], emb, m, s, method=MATNet.encode)
        a_shape = (B, N) if self.discrete else (B, N, self.spec.num_actions)
        tokens = jnp.concatenate([self._start(B), jnp.zeros((B, N, self.token_dim))], axis=1)
        actions = jnp.zeros(a_shape, jnp.int32 if self.discrete else jnp.float32)

        def step(carry, i):
            tokens, actions, logp = carry
            out = self.net.apply(params["net"], tokens[:, :N], rep, dmasks, method=MATNet.decode)
            dist = self._dist(params, out[:, i], avail[:, i])
            a = dist.mode() if greedy else dist.sample(seed=jax.random.fold_in(key, i))
            a = a.astype(actions.dtype)
            lp, _ = logp_entropy(dist, a, self.discrete, self._action_mask[i])
            tokens = tokens.at[:, i + 1].set(self._token(a))
            return (tokens, actions.at[:, i].set(a), logp.at[:, i].set(lp)), None

        # unrolled: N is small and static, and XLA fuses across the agents' passes
        (_, actions, logp), _ = jax.lax.scan(
            step, (tokens, actions, jnp.zeros((B, N))), jnp.arange(N), unroll=True
        )
        return hidden, unflat(actions), unflat(logp), unflat(value)

    def evaluate(self, params, hidden, inp: PolicyInput, actions, ctx: TrainContext | None = None):
        """One teacher-forced pass: ``(logp, entropy, value, extras)``, ``[T, E, A]`` each;
        extras hold the graph density, the communication rate and the gate penalty."""
        lead, unflat, obs, avail = self._flat(inp)
        B, N = obs.shape[:2]
        acts = actions.reshape(B, *actions.shape[len(lead) :])
        emb, (m, s), dmasks, g = self.masks(params, obs, ctx)
        value, rep = self.net.apply(params["net"], emb, m, s, method=MATNet.encode)
        shifted = jnp.concatenate([self._start(B), self._token(acts)[:, : N - 1]], axis=1)
        out = self.net.apply(params["net"], shifted, rep, dmasks, method=MATNet.decode)
        dist = self._dist(params, out, avail)
        logp, entropy = logp_entropy(dist, acts, self.discrete, self._action_mask)
        rate = jax.lax.stop_gradient(g).mean()
        off = 1.0 - jnp.eye(N)
        density = (s * off).sum() / jnp.maximum(off.sum() * B, 1.0)
        extras = {"comm/rate": rate, "comm/density": density}
        if self.gate_cfg.enabled:
            extras["aux_loss"] = self.gate_cfg.penalty * g.mean()
        return unflat(logp), unflat(entropy), unflat(value), extras

    # ---------------------------------------------------------------- logging
    def summaries(self, params) -> dict[str, jax.Array]:
        """What the trainer logs after each chunk: the evaluation graph (``[N, N]``, an
        image) and its density, from one seed's parameters."""
        m, support = self.graph(params)
        off = 1.0 - jnp.eye(self.N)
        out = {"comm/adjacency": support.astype(jnp.float32)}
        out["comm/graph_density"] = (support * off).sum() / jnp.maximum(off.sum(), 1.0)
        if self.learned:
            out["comm/alpha"] = params["graph"]["alpha"]
        return out
