"""MRA: meta representations for agents across games with different numbers of agents
(Zhang et al., arXiv 2108.12988), on the platform's PPO core.

Network, top to bottom:

- **Relation network.** An agent's observation splits into its own features and one slot per
  other entity (:class:`~marl.envs.core.EntityLayout`). Own features and entities are
  embedded; ``Z`` attention heads give ``Z`` relation graphs ``g^z_j = softmax_j(q_z . k_zj)``
  over the entities present, and the agent's embedding under head ``z`` is its own embedding
  joined with ``sum_j g^z_j f(o_j)``: a fixed size whatever the number of agents, and
  invariant to the order of the other entities.
- **Latent.** Each agent draws ``z`` once per episode from the prior ``p(z | m)`` (an MLP of
  the game descriptor ``m``), as a hard Gumbel-softmax sample; ``z`` selects the head, so each
  latent is a relation graph and a behaviour mode. The hidden state holds the one-hot ``z`` and
  its Gumbel noise: :meth:`MRAPolicy.evaluate` uses the acted ``z`` forward and the soft
  sample's gradient backward (straight-through), so losses reach the prior.
- **Policy and critic** (game-common knowledge): MLPs on the selected embedding, trained by the
  PPO core. The reference trains soft actor-critic (entropy 1/30, gamma 0.95); PPO stands in.
- **Mutual information** ``I(A; Z | O)`` for the relation network, contrastive with ``K``
  latents resampled from the prior: ``log pi(a|o,z) - log (1/K) sum_k pi(a|o,z_k)``, ``a`` the
  action taken under ``z``; the policy head is frozen in this term.
- **Game classifier** ``q(m | o, g, z)`` with cross-entropy over the training games; through
  the straight-through sample its gradient trains the prior.

Both terms enter the PPO loss as ``aux_loss = -mi_coef * MI + classifier_coef * CE``.

Fast adaptation to an unseen game (:meth:`MRAPolicy.adapt`; the paper states it, its code has
none): the networks stay frozen and the prior's logits for each evaluation game become free
parameters, moved by a few first-order REINFORCE steps on the return of a handful of episodes
(``method="pg"``), or set to the single best latent found by trying each (``"select"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from marl.agents.actor_critic import action_dist
from marl.agents.networks import _ACT, MLP, _dense
from marl.envs.core import EnvSpec
from marl.errors import ConfigError, MarlError
from marl.policy import PolicyInput
from marl.ppo import _masked_mean


@dataclass(frozen=True)
class LatentConfig:
    num: int = 6  # Z: latents = attention heads (1: the unimodal ablation)
    tau: float = 1.0  # Gumbel-softmax temperature of the straight-through gradient
    mi_coef: float = 0.05
    mi_samples: int = 5  # K resampled latents of the contrastive estimate
    classifier_coef: float = 0.1
    mi_fraction: float = 0.25  # share of a minibatch's environment copies the MI term uses


class Relation(nn.Module):
    """``(own [..., ds], entities [..., M, de], mask [..., M]) -> (h_self [..., dim],
    f(o_j) [..., M, dim], g [..., Z, M])``: the embeddings and the relation weights of
    every head (:func:`embed` joins them into the agent's embedding)."""

    heads: int
    dim: int
    activation: str = "relu"

    @nn.compact
    def __call__(self, own, ents, mask):
        act = _ACT[self.activation]
        h_self = act(_dense(self.dim)(own))
        h_ent = act(_dense(self.dim)(ents))  # f(o_j)
        # head z scores entity j by a bilinear form q_z(h_self) . h_j: the per-head key
        # projection folded into the query (one query per head, no key per head and entity)
        init = nn.initializers.orthogonal(1.0)
        q = nn.DenseGeneral((self.heads, self.dim), kernel_init=init, name="query")(h_self)
        scores = jnp.einsum("...zd,...md->...zm", q, h_ent) / np.sqrt(self.dim)
        scores = jnp.where(mask[..., None, :], scores, -1e9)
        g = jax.nn.softmax(scores, -1) * mask[..., None, :].any(-1, keepdims=True)
        return h_self, h_ent, g


def embed(h_self: jax.Array, h_ent: jax.Array, g: jax.Array) -> jax.Array:
    """The agent's embedding ``[h_self, sum_j g_j f(o_j)]`` for relation weights ``g [...,
    M]`` (or ``[..., Z, M]``: one embedding per head)."""
    if g.ndim == h_ent.ndim:  # per head
        emb = jnp.einsum("...zm,...md->...zd", g, h_ent)
        return jnp.concatenate([jnp.broadcast_to(h_self[..., None, :], emb.shape), emb], -1)
    return jnp.concatenate([h_self, jnp.einsum("...m,...md->...d", g, h_ent)], -1)


class MRAPolicy:
    """The MRA policy set (see the module docstring); needs an environment with an entity
    layout (``population/*``)."""

    recurrent = False  # steps shuffle freely: each step keeps its own latent ...
    step_hidden = True  # ... because the PPO core hands evaluate every step's hidden state
    size_agnostic = True  # parameters do not depend on the number of agents or entities

    def __init__(
        self,
        spec: EnvSpec,
        *,
        latent: LatentConfig = LatentConfig(),
        dim: int = 64,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
        lr: float = 5e-4,
        max_grad_norm: float = 0.5,
        anneal_lr: bool = True,
        total_updates: int = 1,
        updates_per_step: int = 1,
    ):
        if spec.entities is None:
            raise ConfigError(
                f"algo=mra needs an environment whose observations split into entities "
                f"(population/spread, population/occupy); {spec.name} has none"
            )
        if spec.action_type != "discrete":
            raise ConfigError("algo=mra supports discrete actions only")
        if latent.num < 1 or latent.mi_samples < 1:
            raise ConfigError("algo.latent.num and algo.latent.mi_samples must be at least 1")
        self.spec, self.layout, self.latent = spec, spec.entities, latent
        self.Z = latent.num
        self.num_games = max(1, len(self.layout.descriptors))
        self.relation = Relation(self.Z, dim, activation)
        self.actor = MLP(tuple(hidden), spec.num_actions, activation, 0.01)
        self.critic = MLP(tuple(hidden), 1, activation, 1.0)
        self.prior = MLP((dim,), self.Z, activation, 0.01)
        self.classifier = MLP((dim,), self.num_games, activation, 1.0)
        self._descriptors = jnp.asarray(self.layout.descriptors or ((0.0,),), jnp.float32)
        self._lr, self._max_grad_norm, self._anneal = lr, max_grad_norm, anneal_lr
        self._total_steps = max(1, total_updates * updates_per_step)

    # ------------------------------------------------------------------ params
    def init(self, key: jax.Array) -> dict[str, Any]:
        lay = self.layout
        own = jnp.zeros((1, lay.self_dim))
        ents = jnp.zeros((1, lay.max_entities, lay.entity_dim))
        mask = jnp.ones((1, lay.max_entities), bool)
        x = jnp.zeros((1, 2 * self.relation.dim))
        k = jax.random.split(key, 5)
        return {
            "relation": self.relation.init(k[0], own, ents, mask),
            "actor": self.actor.init(k[1], x),
            "critic": self.critic.init(k[2], x),
            "prior": self.prior.init(k[3], jnp.zeros((1, lay.descriptor_dim))),
            "classifier": self.classifier.init(k[4], x),
        }

    def initial_hidden(self, num_envs: int) -> tuple[jax.Array, jax.Array]:
        """``(z one-hot, Gumbel noise)``, each ``[E, A, Z]`` (drawn at each episode start)."""
        z = jnp.zeros((num_envs, self.spec.num_agents, self.Z))
        return z, z

    def optimizer(self) -> optax.GradientTransformation:
        sched = (
            optax.linear_schedule(self._lr, 0.0, self._total_steps) if self._anneal else self._lr
        )
        return optax.chain(
            optax.clip_by_global_norm(self._max_grad_norm), optax.adam(sched, eps=1e-5)
        )

    # ------------------------------------------------------------------ pieces
    def features(self, params, obs: jax.Array):
        """``(descriptor [..., dd], (h_self, f(o_j), g [..., Z, M]))`` of observations."""
        own, desc, ents, mask = self.layout.split(obs)
        return desc, self.relation.apply(params["relation"], own, ents, mask)

    def prior_logits(self, params, desc: jax.Array) -> jax.Array:
        """``[..., Z]`` logits of ``p(z | m)``; adapted parameters (:meth:`adapt`) carry a
        table of logits per evaluation game instead, looked up by descriptor."""
        if "prior_logits" in params:
            keys = params["prior_descriptors"]  # [G, dd]
            idx = jnp.argmin(jnp.abs(desc[..., None, :] - keys).sum(-1), -1)
            return params["prior_logits"][idx]
        return self.prior.apply(params["prior"], desc)

    def game_labels(self, desc: jax.Array) -> jax.Array:
        """The training game (index) of each descriptor, the classifier's target."""
        return jnp.argmin(jnp.abs(desc[..., None, :] - self._descriptors).sum(-1), -1)

    @staticmethod
    def _embed(rel, z: jax.Array) -> jax.Array:
        """The embedding under the relation graph ``z`` selects (the weights are combined
        first: one embedding, whatever Z)."""
        h_self, h_ent, g = rel
        return embed(h_self, h_ent, jnp.einsum("...z,...zm->...m", z, g))

    # ------------------------------------------------------------------ protocol
    def act(self, params, hidden, inp: PolicyInput, key: jax.Array, greedy: bool = False, ctx=None):
        """One step ``[1, E, A]``; a new latent per agent where the episode starts."""
        z_old, noise_old = hidden
        desc, rel = self.features(params, inp.obs[0])
        k_z, k_a = jax.random.split(key)
        first = inp.first[0][:, None, None]
        noise = jnp.where(first, jax.random.gumbel(k_z, z_old.shape), noise_old)
        z_new = jax.nn.one_hot(jnp.argmax(self.prior_logits(params, desc) + noise, -1), self.Z)
        z = jnp.where(first, z_new, z_old)
        x = self._embed(rel, z)
        logits = self.actor.apply(params["actor"], x)
        value = self.critic.apply(params["critic"], x)[..., 0]
        dist = action_dist(logits, inp.avail_actions[0], True)
        actions = dist.mode() if greedy else dist.sample(seed=k_a)
        actions = actions.astype(jnp.int32)
        return (z, noise), actions[None], dist.log_prob(actions)[None], value[None]

    def evaluate(self, params, hidden, inp: PolicyInput, actions: jax.Array, ctx=None):
        """``(logp, entropy, value, extras)`` over ``[T, E, A]`` with each step's latent
        (``hidden`` is per step: the policy sets ``step_hidden``); extras hold the MI and
        classifier terms and their ``aux_loss``."""
        z, noise = hidden
        desc, rel = self.features(params, inp.obs)
        lz = self.prior_logits(params, desc)
        y = jax.nn.softmax((lz + noise) / self.latent.tau)
        z_st = z + y - jax.lax.stop_gradient(y)  # forward: the acted z; backward: the soft one
        # the straight-through latent feeds the policy and the classifier; the critic reads
        # the hard one, so value fitting does not move the prior
        x_sel = self._embed(rel, z_st)
        logits = self.actor.apply(params["actor"], x_sel)
        value = self.critic.apply(params["critic"], self._embed(rel, z))[..., 0]
        dist = action_dist(logits, inp.avail_actions, True)
        logp, entropy = dist.log_prob(actions), dist.entropy()
        mask = inp.alive.astype(jnp.float32)
        key = None if ctx is None else ctx.key
        # the MI term runs the policy head under all Z latents: on a share of the copies
        # (the minibatch is shuffled), which keeps an update within 2x of Z = 1
        n = max(1, int(round(z.shape[1] * self.latent.mi_fraction)))
        sub = jax.tree.map(lambda v: v[:, :n], (rel, lz, z, inp.avail_actions, actions))
        mi = self.mutual_information(params, *sub, key)
        cls = self.classifier.apply(params["classifier"], x_sel)
        labels = self.game_labels(desc)
        ce = optax.softmax_cross_entropy_with_integer_labels(cls, labels)
        acc = (jnp.argmax(cls, -1) == labels).astype(jnp.float32)
        mi = _masked_mean(mi, mask[:, :n])
        ce, acc = _masked_mean(ce, mask), _masked_mean(acc, mask)
        aux = -self.latent.mi_coef * mi + self.latent.classifier_coef * ce
        extras = {"aux_loss": aux, "mra/mi": mi, "mra/classifier_ce": ce, "mra/classifier_acc": acc}
        return logp, entropy, value, extras

    def mutual_information(self, params, rel, lz, z, avail, actions, key=None) -> jax.Array:
        """Per-agent contrastive estimate ``log pi(a|o,z) - log (1/K) sum_k pi(a|o,z_k)``
        (``[...]``) from the relation features ``rel`` (:meth:`features`), the ``z_k`` drawn
        from the prior with ``key`` (without a key: the exact expectation over the prior).
        Only the relation network gets its gradient."""
        frozen = jax.lax.stop_gradient(params["actor"])
        x = embed(*rel)  # [..., Z, 2 dim]
        logits = self.actor.apply(frozen, x)  # [..., Z, nA]: the policy under every latent
        logp_all = jax.nn.log_softmax(jnp.where(avail[..., None, :], logits, -1e9))
        logp_a = jnp.take_along_axis(logp_all, actions[..., None, None], -1)[..., 0]  # [..., Z]
        pos = (logp_a * z).sum(-1)
        lz = jax.lax.stop_gradient(lz)
        if key is None:
            neg = jax.nn.logsumexp(logp_a + jax.nn.log_softmax(lz), -1)
        else:
            K = self.latent.mi_samples
            # inverse-CDF draws: one uniform per sample (a Gumbel per latent costs more
            # than the rest of the term on the CPU)
            cdf = jnp.cumsum(jax.nn.softmax(lz), -1)
            u = jax.random.uniform(key, (K, *lz.shape[:-1], 1))
            zk = jnp.minimum((cdf[None] < u).sum(-1), self.Z - 1)  # [K, ...]
            picked = jnp.take_along_axis(logp_a[None], zk[..., None], -1)[..., 0]
            neg = jax.nn.logsumexp(picked, 0) - np.log(K)
        return pos - neg

    def relation_weights(self, params, obs: jax.Array, z: jax.Array) -> jax.Array:
        """``[..., M]`` relation weights of the graph latent ``z`` (one-hot ``[..., Z]``) picks."""
        _, (_, _, g) = self.features(params, obs)
        return jnp.einsum("...z,...zm->...m", z, g)

    def summaries(self, params) -> dict[str, jax.Array]:
        """Scalars for the logs: the prior's entropy and its largest mode, averaged over the
        training games."""
        p = jax.nn.softmax(self.prior.apply(params["prior"], self._descriptors))
        ent = -(p * jnp.log(p + 1e-12)).sum(-1)
        return {"mra/prior_entropy": ent.mean(), "mra/prior_max": p.max(-1).mean()}

    # ------------------------------------------------------------------ adaptation
    def adapt(
        self,
        env: Any,
        params: Any,
        key: jax.Array,
        *,
        steps: int,
        episodes: int,
        lr: float,
        method: str = "pg",
        greedy: bool = True,
        max_steps: int = 500,
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Fast adaptation of seed-stacked ``params [S, ...]`` to the games of ``env`` (a
        population environment): returns the adapted parameters (the prior replaced by a
        table of logits per game) and the per-step history of mean returns per game.

        ``method="pg"``: ``steps`` REINFORCE steps of size ``lr`` on the logits, each from
        ``episodes`` episodes (advantage: the return standardised within its game; the score
        of an episode sums over its agents' latents);
        ``"select"``: every latent tried on ``episodes`` episodes (all agents alike), the best
        kept per game (``steps`` and ``lr`` unused).
        """
        from marl.rollout import make_jax_eval

        if method not in ("pg", "select"):
            raise ConfigError(f"adapt method must be pg or select, got {method!r}")
        descs = jnp.asarray(env.spec.entities.descriptors, jnp.float32)  # [G, dd]
        ids = env.game_ids(episodes)
        G = len(env.spec.games)
        counts = np.asarray(env.counts)[ids]  # [n] agents of each copy's game
        real = (np.arange(self.spec.num_agents)[None, :] < counts[:, None]).astype(np.float32)
        run = jax.jit(
            jax.vmap(
                make_jax_eval(env, self, episodes, max_steps, greedy, with_hidden=True),
                in_axes=(0, None),
            )
        )
        table = np.array(jax.vmap(lambda p: self.prior.apply(p["prior"], descs))(params))

        def with_table(t):
            S = t.shape[0]
            return {
                **params,
                "prior_logits": jnp.asarray(t, jnp.float32),
                "prior_descriptors": jnp.broadcast_to(descs, (S, *descs.shape)),
            }

        def per_game(ret):  # [S, n] -> [S, G]
            return np.stack([ret[:, ids == g].mean(1) for g in range(G)], 1)

        history = []
        if method == "select":
            scores = []
            for z in range(self.Z):
                t = np.full_like(table, -1e3)
                t[..., z] = 0.0
                out = run(with_table(t), key)  # the same episodes for every latent
                _check_finished(out[3], max_steps)
                ret = np.asarray(out[0])
                scores.append(per_game(ret))
                history.append({"latent": z, "return": per_game(ret).mean(0).tolist()})
            best = np.argmax(np.stack(scores, -1), -1)  # [S, G]
            table = np.where(np.arange(self.Z) == best[..., None], 0.0, -1e3)
            return with_table(table), history
        for step in range(steps):
            out = run(with_table(table), jax.random.fold_in(key, step))
            _check_finished(out[3], max_steps)
            ret, z = np.asarray(out[0]), np.asarray(out[4][0])  # [S, n], [S, n, A, Z]
            history.append({"step": step, "return": per_game(ret).mean(0).tolist()})
            p = np.exp(table - table.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)  # [S, G, Z]
            for g in range(G):
                sel = ids == g
                r = ret[:, sel]
                adv = (r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-8)
                score = (z[:, sel] - p[:, g][:, None, None, :]) * real[None, sel, :, None]
                # the episode's joint latent scores its return: mean over episodes
                grad = (adv[..., None, None] * score).sum((1, 2)) / max(1, int(sel.sum()))
                table[:, g] += lr * grad
        return with_table(table), history


def _check_finished(finished: Any, max_steps: int) -> None:
    if not np.asarray(finished).all():
        raise MarlError(
            f"adaptation episodes did not end within {max_steps} steps; raise eval.max_steps"
        )
