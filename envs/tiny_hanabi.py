"""Tiny Hanabi (Sokota et al.), a pure-JAX, turn-based common-payoff card game.

Each of two players draws a private card (uniform, independent). Player 0 sees its card and
acts publicly; player 1 sees its own card and player 0's action and acts; both get
``payoff[card0][card1][action0][action1]``. Games A-G (``envs/data/tiny_hanabi.json``) differ
in their payoff tables and numbers of cards and actions; the file also holds each game's
optimal return, found by enumerating every deterministic joint policy.

It follows JaxMARL's turn-based protocol: the player not to move has one legal action, the
no-op (the last action index), so the array view and the trainer handle it as Hanabi.
Observation of a player: one-hot own card, one-hot of player 0's action (zeros before it is
taken) and a one-hot "my turn" flag.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jaxmarl.environments import spaces
from jaxmarl.environments.multi_agent_env import MultiAgentEnv

from marl.errors import ConfigError

DATA = Path(__file__).resolve().parent / "data" / "tiny_hanabi.json"


@cache
def games() -> dict[str, dict[str, Any]]:
    """The suite: ``{name: {"payoff": [c0][c1][a0][a1] array, "optimal_return": float}}``."""
    raw = json.loads(DATA.read_text())["games"]
    return {
        k: {"payoff": np.asarray(v["payoff"], np.float32), "optimal_return": v["optimal_return"]}
        for k, v in raw.items()
    }


@chex.dataclass(frozen=True)
class TinyHanabiState:
    cards: chex.Array  # [2] int
    action0: chex.Array  # int, -1 before player 0 acts
    turn: chex.Array  # int: the player to move (2 once over)
    step: chex.Array


class TinyHanabi(MultiAgentEnv):
    """One game of the suite (``game="A"`` .. ``"G"``) or a custom ``payoff`` table."""

    def __init__(self, game: str = "A", payoff: Any = None):
        if payoff is None:
            if game not in games():
                raise ConfigError(
                    f"tiny_hanabi: unknown game {game!r}; games: {', '.join(sorted(games()))}"
                )
            payoff = games()[game]["payoff"]
        payoff = np.asarray(payoff, np.float32)
        if payoff.ndim != 4:
            raise ConfigError("tiny_hanabi: payoff must be [cards0][cards1][actions0][actions1]")
        super().__init__(num_agents=2)
        self.game = game
        self.payoff = jnp.asarray(payoff)
        self.num_cards = payoff.shape[:2]
        self.num_moves = int(max(payoff.shape[2:]))  # + 1 no-op
        self.move_counts = payoff.shape[2:]
        self.noop = self.num_moves
        self.agents = ["agent_0", "agent_1"]
        self.obs_dim = int(max(self.num_cards)) + int(payoff.shape[2]) + 2
        self.observation_spaces = {a: spaces.Box(0.0, 1.0, (self.obs_dim,)) for a in self.agents}
        self.action_spaces = {a: spaces.Discrete(self.num_moves + 1) for a in self.agents}
        self.max_steps = 2

    @property
    def name(self) -> str:
        return f"tiny_hanabi/{self.game}"

    def reset(self, key: chex.PRNGKey):
        k0, k1 = jax.random.split(key)
        cards = jnp.stack(
            [
                jax.random.randint(k0, (), 0, self.num_cards[0]),
                jax.random.randint(k1, (), 0, self.num_cards[1]),
            ]
        )
        state = self.state_from(cards)
        return self.get_obs(state), state

    def state_from(self, cards: chex.Array, action0: Any = -1) -> TinyHanabiState:
        """The state with these cards; after player 0's move where ``action0 >= 0``."""
        action0 = jnp.asarray(action0, jnp.int32)
        return TinyHanabiState(
            cards=jnp.asarray(cards, jnp.int32),
            action0=action0,
            turn=jnp.where(action0 >= 0, 1, 0).astype(jnp.int32),
            step=jnp.where(action0 >= 0, 1, 0).astype(jnp.int32),
        )

    def step_env(self, key: chex.PRNGKey, state: TinyHanabiState, actions: dict[str, Any]):
        a0 = jnp.asarray(actions["agent_0"], jnp.int32)
        a1 = jnp.asarray(actions["agent_1"], jnp.int32)
        first = state.turn == 0
        c0, c1 = state.cards[0], state.cards[1]
        n0, n1 = self.move_counts
        reward = jnp.where(
            first,
            0.0,
            self.payoff[c0, c1, jnp.clip(state.action0, 0, n0 - 1), jnp.clip(a1, 0, n1 - 1)],
        )
        state = state.replace(
            action0=jnp.where(first, a0, state.action0),
            turn=state.turn + 1,
            step=state.step + 1,
        )
        done = state.turn >= 2
        obs = self.get_obs(state)
        rewards = {a: reward for a in self.agents}
        dones = {a: done for a in self.agents} | {"__all__": done}
        return obs, state, rewards, dones, {}

    def get_obs(self, state: TinyHanabiState) -> dict[str, chex.Array]:
        C = int(max(self.num_cards))
        n0 = int(self.move_counts[0])
        act = jax.nn.one_hot(state.action0, n0) * (state.action0 >= 0)
        out = {}
        for i, a in enumerate(self.agents):
            card = jax.nn.one_hot(state.cards[i], C)
            turn = jax.nn.one_hot(jnp.where(state.turn == i, 1, 0), 2)
            out[a] = jnp.concatenate([card, act, turn])
        return out

    def get_legal_moves(self, state: TinyHanabiState) -> dict[str, chex.Array]:
        moves = jnp.arange(self.num_moves + 1)
        out = {}
        for i, a in enumerate(self.agents):
            mine = state.turn == i
            legal = jnp.where(mine, moves < self.move_counts[i], moves == self.noop)
            out[a] = legal
        return out

    def get_avail_actions(self, state: TinyHanabiState) -> dict[str, chex.Array]:
        return self.get_legal_moves(state)

    # ------------------------------------------------------------------ analysis
    def info_index(self, obs: chex.Array) -> chex.Array:
        """Index of the information state of one player's observation: player 0's card
        (``0..C0-1``), then player 1's ``(card, action0)`` (``C0 + card * A0 + action0``)."""
        C = int(max(self.num_cards))
        n0 = int(self.move_counts[0])
        card = jnp.argmax(obs[:C])
        has_act = obs[C : C + n0].sum() > 0
        act = jnp.argmax(obs[C : C + n0])
        return jnp.where(has_act, self.num_cards[0] + card * n0 + act, card)

    @property
    def num_info_states(self) -> int:
        return int(self.num_cards[0] + self.num_cards[1] * self.move_counts[0])

    def expected_return(self, probs: chex.Array) -> chex.Array:
        """Exact expected return of a tabular joint policy ``probs [num_info_states, nA]``
        (columns beyond a player's moves are ignored)."""
        c0, c1 = self.num_cards
        n0, n1 = self.move_counts
        p0 = probs[:c0, :n0]  # [c0, a0]
        p1 = probs[c0:].reshape(c1, n0, -1)[..., :n1]  # [c1, a0, a1]
        joint = jnp.einsum("xa,yab->xyab", p0, p1)
        return (joint * self.payoff).sum() / (c0 * c1)
