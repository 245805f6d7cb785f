"""Beliefs for the pure-JAX searcher (:class:`marl.agents.search.JaxSearch`).

A belief function maps ``(key, game context) -> (particles, weights)``: a batch of environment
states consistent with what the acting player knows, and their (unnormalised) weights. The
context (:class:`PlayContext`) is what a game loop keeps: the true environment state (of which
a belief may read only what the acting player could know), and each player's last decision
(observation, legal actions, action) for likelihood weights.

- :func:`tiny_hanabi_belief`: exact; the partner's card enumerated, weighted by chance and by
  the blueprint's probability of the partner's action.
- :func:`hanabi_belief`: particles of the acting player's own hand and the undealt deck
  consistent with the public record (the cards it cannot see, as a multiset, and the hints it
  received), weighted by the blueprint's probability of the partner's last action.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class PlayContext(NamedTuple):
    """What a game loop hands to a belief at a decision point."""

    env_state: Any  # the true state (beliefs read only what the acting player knows)
    player: jax.Array  # the acting player
    last_obs: jax.Array  # [A, D] each player's observation at its last decision
    last_avail: jax.Array  # [A, nA]
    last_action: jax.Array  # [A] (-1: no decision yet)


def tiny_hanabi_belief(env: Any, blueprint: Any):
    """Exact belief of tiny Hanabi (``env``: the array view of ``tiny_hanabi/<game>``)."""
    raw = env.env
    c0, c1 = raw.num_cards
    K = max(c0, c1)

    def belief(bp_params, key, ctx: PlayContext, num: int):
        s = ctx.env_state
        p = ctx.player
        other_cards = jnp.arange(K)
        n_other = jnp.where(p == 0, c1, c0)
        cards = jnp.where(
            p == 0,
            jnp.stack([jnp.full((K,), s.cards[0]), other_cards], -1),
            jnp.stack([other_cards, jnp.full((K,), s.cards[1])], -1),
        )
        particles = jax.vmap(lambda c: s.replace(cards=c))(cards)
        # player 1 reweights player 0's cards by the blueprint's probability of its action
        obs0 = jax.vmap(lambda st: env.env.get_obs(st.replace(action0=-1, turn=0)))(particles)
        obs0 = jnp.stack([obs0[a] for a in raw.agents], 1)  # [K, A, D_raw]
        if env.spec.agent_id:
            eye = jnp.broadcast_to(jnp.eye(2), (K, 2, 2))
            obs0 = jnp.concatenate([obs0, eye], -1)
        avail0 = jax.vmap(lambda st: env._avail(st.replace(action0=-1, turn=0)))(particles)  # noqa: SLF001
        lp = blueprint.log_probs(bp_params, obs0, avail0, jnp.zeros((K, env.spec.state_dim)))
        like = jnp.exp(lp[:, 0, jnp.clip(s.action0, 0)])
        w = jnp.where(p == 1, like, 1.0) * (other_cards < n_other)
        return particles, w

    return belief


def hanabi_belief(env: Any, blueprint: Any, likelihood: str = "policy"):
    """Particle belief of JaxMARL Hanabi for two players (``env``: its array view).

    One particle: the acting player's hand drawn card by card from the cards it cannot see
    (all cards less those on the fireworks, in the discard pile and in the partner's hand,
    which equal its own hand plus the undealt deck) restricted to what the hints say of each
    card, then the rest shuffled into the undealt deck. Weights: the proposal's correction
    (the product of the per-card normalisers, so that hands are weighted as dealt at random)
    times the likelihood of the partner's last action given the sampled hand (the partner's
    observation of it patched in; the rest of that observation, derived features included, is
    kept as observed): ``likelihood="policy"`` the blueprint's probability of the action,
    ``"greedy"`` 1 where the action is the blueprint's argmax and ``1e-3`` elsewhere (a partner
    that plays the blueprint's argmax), ``"none"`` no likelihood.
    """
    from marl.errors import ConfigError

    if likelihood not in ("policy", "greedy", "none"):
        raise ConfigError(f"belief likelihood must be policy, greedy or none, got {likelihood!r}")
    raw = env.env
    if raw.num_agents != 2:
        raise ConfigError(f"the Hanabi belief handles two players, not {raw.num_agents}")
    if raw.shuffle_player_order:
        raise ConfigError("the Hanabi belief needs shuffle_player_order=false (seats = agents)")
    H, C, R = raw.hand_size, raw.num_colors, raw.num_ranks
    CR = C * R
    deck_size = raw.deck_size

    def one(bp_params, key, ctx: PlayContext):
        s = ctx.env_state
        p = ctx.player
        partner = 1 - p
        hand = s.player_hands[p].reshape(H, CR)
        deck = s.deck.reshape(deck_size, CR)
        # the unseen multiset: own hand + undealt deck (what the public record leaves)
        counts = hand.sum(0) + deck.sum(0)
        k_hand, k_deck = jax.random.split(key)
        keys = jax.random.split(k_hand, H)
        new_hand = []
        logw = jnp.zeros(())
        for j in range(H):  # sequential draws, without replacement
            real = hand[j].any()
            probs = counts * s.card_knowledge[p, j]
            z = probs.sum()
            x = jax.random.categorical(keys[j], jnp.log(jnp.where(probs > 0, probs, 1e-30)))
            card = jax.nn.one_hot(x, CR) * real
            counts = counts - card
            logw = logw + jnp.where(real, jnp.log(jnp.maximum(z, 1e-30)), 0.0)
            logw = jnp.where(real & (z <= 0), -jnp.inf, logw)
            new_hand.append(card)
        new_hand = jnp.stack(new_hand)
        # the remaining unseen cards, shuffled into the undealt positions
        n_rem = counts.sum().astype(jnp.int32)
        ids = jnp.repeat(jnp.arange(CR), counts.astype(jnp.int32), total_repeat_length=deck_size)
        order = jnp.argsort(
            jnp.where(jnp.arange(deck_size) < n_rem, jax.random.uniform(k_deck, (deck_size,)), 2.0)
        )
        ids = ids[order]
        i = jnp.arange(deck_size) - s.num_cards_dealt
        valid = (i >= 0) & (i < n_rem)
        new_deck = jax.nn.one_hot(ids[jnp.clip(i, 0, deck_size - 1)], CR) * valid[:, None]
        particle = s.replace(
            player_hands=s.player_hands.at[p].set(new_hand.reshape(H, C, R)),
            deck=new_deck.reshape(deck_size, C, R),
        )
        if likelihood != "none":
            # the partner saw this hand when it last acted (hints change knowledge, not cards)
            obs = ctx.last_obs.at[partner, : H * CR].set(new_hand.reshape(-1))
            lp = blueprint.log_probs(
                bp_params, obs, ctx.last_avail, jnp.zeros((env.spec.state_dim,))
            )[partner]
            a = jnp.clip(ctx.last_action[partner], 0)
            if likelihood == "greedy":
                like = jnp.where(jnp.argmax(lp) == a, 0.0, jnp.log(1e-3))
            else:
                like = lp[a]
            logw = logw + jnp.where(ctx.last_action[partner] >= 0, like, 0.0)
        return particle, logw

    def belief(bp_params, key, ctx: PlayContext, num: int):
        particles, logw = jax.vmap(one, in_axes=(None, 0, None))(
            bp_params, jax.random.split(key, num), ctx
        )
        top = jnp.max(logw)  # -inf: every draw hit a dead end; equal weights then
        return particles, jnp.where(jnp.isfinite(top), jnp.exp(logw - top), 1.0)

    return belief
