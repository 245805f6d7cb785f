"""AMI: Adversarial Minority Influence (Li et al., arXiv 2302.03322), discrete actions.

The adversary, one slot of a frozen cooperative team (:mod:`marl.attack`), is trained with
PPO on a shaped reward. Besides its actor-critic (MAPPO's, :class:`ActorCriticPolicy`) the
attacker learns, on every rollout (the PPO core's ``prepare`` hook):

* the **victim model** ``p_phi(a_{t+1} | s_t, a_t)``: each victim's next action from the
  global state and the joint action (cross-entropy on the victims' observed next actions);
* the **oracle** ``pi_psi(tau_{t+1} | s_t, a_t)``: a target action for every victim at
  ``t + 1``, restricted to its legal actions then; trained with PPO on the advantage of the
  shaped reward shifted by one step (the target pays off when the victim acts on it), with
  its own critic ``V_psi(s_t)``.

The **unilateral, targeted influence** of step ``t``: replace the adversary's action in
``a_t`` by K samples from its current policy, predict each victim's next action with
``p_phi`` (argmax, one-hot) and average them: ``p_bar_i``, the victims' next-action
distribution marginalised over the adversary's own policy; then
``S_t = sum_i visible_i || p_bar_i - onehot(tau_i) ||_1`` over the victims the adversary
sees. The adversary's reward is ``-r_team - coef * S_t``, standardised with running
statistics; nothing is differentiated through ``p_phi`` or the oracle (reward only).

Ablations (``algo.influence``): ``target=none`` (no oracle): the reward *adds*
``coef * sum_i visible_i || onehot(pred_i(a_t)) - p_bar_i ||_1``, how far the adversary's
realised action moves the victims' predicted actions from their marginal; ``marginal=
realised`` (bilateral): ``p_bar_i`` is replaced by the prediction under the realised joint
action, so the term no longer separates the adversary's influence from the victims' own.

Continuous actions (the paper's MuJoCo form): the victim model and the oracle are diagonal
Gaussians (means from the MLP, a learned log standard deviation per output), the victim
model learns by likelihood, and the influence is the density of each victim's target under
the victim model, averaged over the K adversary samples and summed over victims and action
dimensions; it is *added*: ``-r_team + coef * I`` (``coef`` 1.0 by default there, 0.1 for
discrete actions). The ablations read the same way (untargeted: the L1 distance of the
predicted means; bilateral: the density under the realised joint action).

Order per rollout, as the reference learner: the shaped reward with the current models and
one oracle sample; the victim model's epochs; the oracle's epochs (critic and PPO); then
the adversary's PPO epochs (the core). Networks are MLPs (the reference uses GRUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from marl.agents.networks import MLP
from marl.errors import ConfigError
from marl.policy import PolicyInput
from marl.ppo import PPOConfig, gae, scan


@dataclass(frozen=True)
class InfluenceConfig:
    coef: float | None = None  # None: 0.1 (discrete), 1.0 (continuous), as the reference
    samples: int = 10
    target: str = "oracle"  # oracle | none
    marginal: str = "policy"  # policy | realised
    hidden: tuple[int, ...] = (64, 64)
    lr: float = 1e-3
    epochs: int = 4
    max_grad_norm: float = 10.0
    standardise: bool = True
    standardise_mean: bool = True  # False: divide by the running std only


class Head(nn.Module):
    """An MLP with ``out`` outputs: logits, or the means of a diagonal Gaussian with a
    learned log standard deviation per output (``gaussian``)."""

    hidden: tuple[int, ...]
    out: int
    gaussian: bool = False

    @nn.compact
    def __call__(self, x: jax.Array):
        y = MLP(self.hidden, self.out, "relu", 0.01)(x)
        if not self.gaussian:
            return y
        log_std = self.param("log_std", nn.initializers.constant(-0.5), (self.out,))
        return y, jnp.broadcast_to(log_std, y.shape)


def _gauss_logp(x: jax.Array, mean: jax.Array, log_std: jax.Array) -> jax.Array:
    return -0.5 * ((x - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * jnp.log(2 * jnp.pi)


def _masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def _masked_logits(logits: jax.Array, avail: jax.Array) -> jax.Array:
    return jnp.where(avail, logits, -1e9)


class RewardStats:
    """Running mean and variance (parallel Welford) of the shaped reward."""

    @staticmethod
    def create() -> dict[str, jax.Array]:
        return {"count": jnp.float32(1e-4), "mean": jnp.float32(0.0), "var": jnp.float32(1.0)}

    @staticmethod
    def update(st: dict[str, jax.Array], x: jax.Array) -> dict[str, jax.Array]:
        n = jnp.float32(x.size)
        m, v = x.mean(), x.var()
        delta = m - st["mean"]
        tot = st["count"] + n
        mean = st["mean"] + delta * n / tot
        m2 = st["var"] * st["count"] + v * n + delta**2 * st["count"] * n / tot
        return {"count": tot, "mean": mean, "var": m2 / tot}


class AMIPolicy:
    """The AMI attacker: the adversary's actor-critic (``base``) for acting and PPO, and the
    victim model, the oracle and the reward shaping in :meth:`prepare` (state in the train
    state's ``aux``)."""

    def __init__(self, base: Any, cfg: InfluenceConfig, ppo: PPOConfig):
        spec = base.spec
        if spec.attack is None:
            raise ConfigError(
                "algo=ami attacks a trained team: run it with `marl attack victims=<run dir> "
                "attack=ami` (env=attack)"
            )
        if base.recurrent:
            raise ConfigError("algo=ami: the adversary's policy is feed-forward here")
        self.base, self.spec, self.cfg, self.ppo = base, spec, cfg, ppo
        self.recurrent = False
        L = spec.attack
        self.L = L
        self.discrete = spec.action_type == "discrete"
        self.coef = cfg.coef if cfg.coef is not None else (0.1 if self.discrete else 1.0)
        out, gauss = L.num_agents * L.num_actions, not self.discrete
        self.model = Head(cfg.hidden, out, gauss)  # the victim model
        self.oracle = Head(cfg.hidden, out, gauss)
        self.oracle_critic = MLP(cfg.hidden, 1, "relu", 1.0)
        self._tx = optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), optax.adam(cfg.lr))

    # ------------------------------------------------------------------ the adversary
    def init(self, key: jax.Array) -> Any:
        return self.base.init(key)

    def initial_hidden(self, num_envs: int) -> Any:
        return self.base.initial_hidden(num_envs)

    def optimizer(self) -> optax.GradientTransformation:
        return self.base.optimizer()

    def act(self, params, hidden, inp: PolicyInput, key, greedy: bool = False, ctx=None):
        return self.base.act(params, hidden, inp, key, greedy, ctx)

    def evaluate(self, params, hidden, inp: PolicyInput, actions, ctx=None):
        return self.base.evaluate(params, hidden, inp, actions, ctx)

    # ------------------------------------------------------------------ the attacker's models
    def init_aux(self, key: jax.Array) -> dict[str, Any]:
        L = self.L
        x = jnp.zeros((1, L.base_state_dim + L.num_agents * L.num_actions))
        k1, k2, k3 = jax.random.split(key, 3)
        model = self.model.init(k1, x)
        oracle = {
            "pi": self.oracle.init(k2, x),
            "v": self.oracle_critic.init(k3, x[:, : L.base_state_dim]),
        }
        return {
            "model": model,
            "oracle": oracle,
            "model_opt": self._tx.init(model),
            "oracle_opt": self._tx.init(oracle),
            "reward": RewardStats.create(),
        }

    def _features(self, s: jax.Array, joint: jax.Array) -> jax.Array:
        return jnp.concatenate([s, joint.reshape(*joint.shape[:-2], -1)], -1)

    def _shape(self, out: jax.Array) -> jax.Array:
        return out.reshape(*out.shape[:-1], self.L.num_agents, self.L.num_actions)

    def model_out(self, params: Any, s: jax.Array, joint: jax.Array):
        """The victim model for ``s [..., S]`` and the joint action ``joint [..., A, nA]``
        (one-hot, or the action vectors): ``[..., A, nA]`` logits of each agent's next
        action, or the ``(mean, log_std)`` of its Gaussian."""
        out = self.model.apply(params, self._features(s, joint))
        return self._shape(out) if self.discrete else tuple(map(self._shape, out))

    def oracle_out(self, params: Any, s: jax.Array, joint: jax.Array, avail: jax.Array):
        """The oracle's target distribution per agent: logits restricted to ``avail``, or a
        Gaussian's ``(mean, log_std)``."""
        out = self.oracle.apply(params["pi"], self._features(s, joint))
        if self.discrete:
            return _masked_logits(self._shape(out), avail)
        return tuple(map(self._shape, out))

    def _logp(self, out, x: jax.Array) -> jax.Array:
        """Log-probability per agent of ``x`` (indices, or action vectors: dims summed)."""
        if self.discrete:
            return jnp.take_along_axis(jax.nn.log_softmax(out), x[..., None], -1)[..., 0]
        return _gauss_logp(x, *out).sum(-1)

    def _encode(self, a: jax.Array) -> jax.Array:
        """One agent's action as it enters the joint action."""
        return jax.nn.one_hot(a, self.L.num_actions) if self.discrete else a

    def _batch(self, traj: Any, last_inp: PolicyInput) -> dict[str, jax.Array]:
        """The attacker's view of a rollout ``[T, E]``: state, joint action, the victims'
        next actions and legal actions, visibility, and which steps have a next step."""
        L = self.L
        s, acts, _, vis = L.split(traj.inp.state)
        nxt = jnp.concatenate([traj.inp.state[1:], last_inp.state], 0)
        _, acts_next, avail_next, _ = L.split(nxt)
        joint = acts.at[..., L.slot, :].set(self._encode(traj.action[:, :, 0]))
        victims = (jnp.arange(L.num_agents) != L.slot).astype(jnp.float32)
        valid = 1.0 - traj.done.astype(jnp.float32)  # t + 1 is in the same episode
        mask = valid[..., None] * victims
        if self.discrete:
            # a victim with a choice to predict at t + 1 (dead SMAX units keep only the no-op)
            mask = mask * (avail_next.sum(-1) > 1)
        return {
            "s": s,
            "joint": joint,
            "next": jnp.argmax(acts_next, -1) if self.discrete else acts_next,
            "avail_next": avail_next,
            "vis": vis * victims,
            "mask": mask,  # [T, E, A]
            "valid": valid,  # [T, E]
        }

    def _predict(self, aux: Any, b: dict[str, jax.Array], joint: jax.Array):
        """The victim model's prediction under ``joint``: one-hot argmax (discrete, among
        the legal next actions) or the Gaussian ``(mean, log_std)``."""
        out = self.model_out(aux["model"], b["s"], joint)
        if not self.discrete:
            return out
        logits = _masked_logits(out, b["avail_next"])
        return jax.nn.one_hot(jnp.argmax(logits, -1), self.L.num_actions)

    def influence(
        self, params: Any, aux: Any, traj: Any, b: dict[str, jax.Array], tau: jax.Array, key
    ) -> jax.Array:
        """``[T, E]`` the influence term of every step, summed over the victims the adversary
        sees: discrete, targeted: the L1 distance of the victims' predicted next actions
        (marginalised over the adversary's policy, or under the realised joint action) to
        the oracle's targets ``tau [T, E, A]`` (to be lowered); continuous, targeted: the
        density of the targets (to be raised); untargeted: how far the adversary's realised
        action moves the predictions from their marginal (to be raised)."""
        L, cfg = self.L, self.cfg
        T, E = traj.done.shape

        # K actions of the adversary's current policy at every step
        flat = jax.tree.map(lambda x: x.reshape(1, T * E, *x.shape[2:]), traj.inp)
        hidden = self.base.initial_hidden(T * E)

        def sample(k):
            _, a, _, _ = self.base.act(params, hidden, flat, k)
            return a.reshape(T, E, *a.shape[3:])

        adv = jax.vmap(sample)(jax.random.split(key, cfg.samples))  # [K, T, E(, nA)]

        def joint_with(a):
            return b["joint"].at[..., L.slot, :].set(self._encode(a))

        weight = b["vis"] * b["mask"]
        if self.discrete:
            p_bar = jax.vmap(lambda a: self._predict(aux, b, joint_with(a)))(adv).mean(0)
            realised = self._predict(aux, b, b["joint"])
            if cfg.target == "none":
                term = jnp.abs(realised - p_bar).sum(-1)
            else:
                ref = p_bar if cfg.marginal == "policy" else realised
                term = jnp.abs(ref - jax.nn.one_hot(tau, L.num_actions)).sum(-1)
            return (term * weight).sum(-1)
        if cfg.target == "none":
            means = jax.vmap(lambda a: self._predict(aux, b, joint_with(a))[0])(adv)
            realised = self._predict(aux, b, b["joint"])[0]
            term = jnp.abs(realised - means.mean(0)).sum(-1)
        elif cfg.marginal == "policy":

            def density(a):
                return jnp.exp(_gauss_logp(tau, *self._predict(aux, b, joint_with(a))))

            term = jax.vmap(density)(adv).mean(0).sum(-1)  # over samples, then dims
        else:
            term = jnp.exp(_gauss_logp(tau, *self._predict(aux, b, b["joint"]))).sum(-1)
        return (term * weight).sum(-1)

    # ------------------------------------------------------------------ one rollout
    def prepare(self, params: Any, aux: Any, traj: Any, last_inp: PolicyInput, key: jax.Array):
        """Shape the rollout's reward, then train the victim model and the oracle on it:
        ``(aux, reward [T, E, 1], metrics)``."""
        cfg, ppo = self.cfg, self.ppo
        k_tau, k_inf, k_model, k_oracle = jax.random.split(key, 4)
        b = self._batch(traj, last_inp)
        targeted = cfg.target == "oracle"

        # 1. the oracle's targets (one sample per rollout) and the influence term
        o_out = self.oracle_out(aux["oracle"], b["s"], b["joint"], b["avail_next"])
        if self.discrete:
            tau = jax.random.categorical(k_tau, o_out)
        else:
            mean, log_std = o_out
            tau = mean + jnp.exp(log_std) * jax.random.normal(k_tau, mean.shape)
        old_logp = self._logp(o_out, tau)
        S = self.influence(params, aux, traj, b, tau, k_inf)
        env_r = traj.reward[..., 0]
        # lowered: the discrete targeted distance; raised: a density or a deviation
        sign = -1.0 if (targeted and self.discrete) else 1.0
        shaped = env_r + sign * self.coef * S
        stats = aux["reward"]
        if cfg.standardise:
            stats = RewardStats.update(stats, shaped)
            centre = stats["mean"] if cfg.standardise_mean else 0.0
            reward = (shaped - centre) / jnp.sqrt(stats["var"] + 1e-8)
        else:
            reward = shaped

        # 2. the victim model: likelihood of the victims' observed next actions
        def fit(p):
            out = self.model_out(p, b["s"], b["joint"])
            if self.discrete:
                out = _masked_logits(out, b["avail_next"])
            return out

        out0 = fit(aux["model"])
        if self.discrete:
            fit0 = (jnp.argmax(out0, -1) == b["next"]).astype(jnp.float32)  # accuracy
        else:
            fit0 = jnp.abs(out0[0] - b["next"]).mean(-1)  # mean absolute error
        fit0 = _masked_mean(fit0, b["mask"])
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731  [T, E, ...] -> [T*E, ...]

        def model_loss(p, idx):
            out = self.model_out(p, flat(b["s"])[idx], flat(b["joint"])[idx])
            target = flat(b["next"])[idx]
            if self.discrete:
                nll = optax.softmax_cross_entropy_with_integer_labels(out, target)
            else:
                nll = -_gauss_logp(target, *out).sum(-1)
            return _masked_mean(nll, flat(b["mask"])[idx])

        model, model_opt, model_l = self._epochs(
            model_loss, aux["model"], aux["model_opt"], k_model, traj.done.size
        )

        # 3. the oracle: its critic on the shaped reward, PPO on the shifted advantage
        oracle, oracle_opt, oracle_l = aux["oracle"], aux["oracle_opt"], jnp.float32(0.0)
        if targeted:
            values = self.oracle_critic.apply(oracle["v"], b["s"])[..., 0]
            last_s = self.L.split(last_inp.state[0])[0]
            last_v = self.oracle_critic.apply(oracle["v"], last_s)[..., 0]
            adv, ret = gae(
                reward[..., None],
                values[..., None],
                traj.done,
                last_v[..., None],
                ppo.gamma,
                ppo.gae_lambda,
            )
            adv, ret = adv[..., 0], ret[..., 0]
            # the target chosen at t is acted on at t + 1: A_psi(t) = A(t + 1)
            shifted = jnp.concatenate([adv[1:], jnp.zeros_like(adv[:1])], 0) * b["valid"]
            # the rollout's last step has no shifted advantage: out of the loss
            m = b["mask"] * (jnp.arange(adv.shape[0]) < adv.shape[0] - 1)[:, None, None]
            per_agent = shifted[..., None] * jnp.ones_like(m)
            a_mean = _masked_mean(per_agent, m)
            a_std = jnp.sqrt(_masked_mean((per_agent - a_mean) ** 2, m))
            shifted = (shifted - a_mean) / (a_std + 1e-8)

            def oracle_loss(p, idx):
                out = self.oracle_out(
                    p, flat(b["s"])[idx], flat(b["joint"])[idx], flat(b["avail_next"])[idx]
                )
                ratio = jnp.exp(self._logp(out, flat(tau)[idx]) - flat(old_logp)[idx])
                a = flat(shifted)[idx][:, None]
                clipped = jnp.clip(ratio, 1 - ppo.clip_eps, 1 + ppo.clip_eps)
                pg = -_masked_mean(jnp.minimum(ratio * a, clipped * a), flat(m)[idx])
                v = self.oracle_critic.apply(p["v"], flat(b["s"])[idx])[..., 0]
                return pg + 0.5 * jnp.mean((v - flat(ret)[idx]) ** 2)

            oracle, oracle_opt, oracle_l = self._epochs(
                oracle_loss, oracle, oracle_opt, k_oracle, traj.done.size
            )

        new_aux = {
            "model": model,
            "oracle": oracle,
            "model_opt": model_opt,
            "oracle_opt": oracle_opt,
            "reward": stats,
        }
        metrics = {
            "ami/influence": _masked_mean(S, b["valid"]),
            "ami/reward_env": env_r.mean(),
            "ami/reward_shaped": shaped.mean(),
            # on this rollout before training on it: accuracy, or mean absolute error
            ("ami/model_acc" if self.discrete else "ami/model_mae"): fit0,
            "ami/model_loss": model_l,
            "ami/oracle_loss": oracle_l,
        }
        return new_aux, reward[..., None], metrics

    def _epochs(self, loss_fn, params, opt_state, key, n: int):
        """``cfg.epochs`` passes over ``n`` shuffled steps in ``ppo.num_minibatches``
        minibatches of ``loss_fn(params, indices)``; returns the last loss."""
        nm = self.ppo.num_minibatches
        size = n // nm

        def epoch(carry, k):
            perm = jax.random.permutation(k, n)[: nm * size].reshape(nm, size)

            def mb(carry, idx):
                p, o = carry
                loss, g = jax.value_and_grad(loss_fn)(p, idx)
                upd, o = self._tx.update(g, o, p)
                return (optax.apply_updates(p, upd), o), loss

            return scan(mb, carry, perm)

        (params, opt_state), losses = scan(
            epoch, (params, opt_state), jax.random.split(key, self.cfg.epochs)
        )
        return params, opt_state, losses[-1].mean()
