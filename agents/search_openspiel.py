"""MD / MMD search on OpenSpiel games, with exact beliefs from OpenSpiel's information states.

For games whose tree can be walked (Kuhn and Leduc poker, small dark Hex, tiny Hanabi) the
searcher enumerates once every history of every information state with its chance and
opponents' reach under the blueprint: the exact belief ``P(h | s)`` (the searcher's own reach is
the same for every ``h`` in ``s`` by perfect recall). Action values are exact (a walk of the
blueprint's subtree, ``rollouts=0``) or Monte-Carlo blueprint rollouts with common random
numbers across actions; beliefs are exact (``samples=0``) or ``samples`` histories drawn from it.

:func:`search_policy` applies the search at every information state and returns the searched
joint policy as an OpenSpiel ``TabularPolicy``, so OpenSpiel's ``exploitability`` evaluates it.
"""

from __future__ import annotations

import collections
from typing import Any

import numpy as np

from marl.agents.search import SearchConfig, mmd_log_policy
from marl.errors import ConfigError

MAX_NODES = 2_000_000  # histories enumerated for exact beliefs before giving up


def load_game(name: str) -> Any:
    """An OpenSpiel game from its name with parameters, e.g. ``dark_hex(num_rows=2,num_cols=2)``."""
    import pyspiel

    try:
        return pyspiel.load_game(name)
    except pyspiel.SpielError as err:
        raise ConfigError(f"cannot load OpenSpiel game {name!r}: {err}") from None


def policy_probs(policy: Any, state: Any, num_actions: int) -> np.ndarray:
    """``[num_actions]`` action probabilities of an OpenSpiel policy at ``state``."""
    p = np.zeros(num_actions)
    for a, pr in policy.action_probabilities(state).items():
        p[a] = pr
    return p


class OpenSpielSearch:
    """MD / MMD search with exact beliefs on an OpenSpiel game.

    Args:
        game: a ``pyspiel.Game`` (sequential, with information-state strings).
        blueprint: an OpenSpiel ``Policy`` every player follows in rollouts.
        config: the update and the counts (``samples=0``: exact belief; ``rollouts=0``:
            exact action values).
        seed: randomness of sampled beliefs and rollouts.
    """

    def __init__(self, game: Any, blueprint: Any, config: SearchConfig, seed: int = 0):
        import pyspiel

        gt = game.get_type()
        if gt.dynamics != pyspiel.GameType.Dynamics.SEQUENTIAL:
            raise ConfigError(f"{gt.short_name}: search needs a sequential game")
        if not gt.provides_information_state_string:
            raise ConfigError(f"{gt.short_name}: search needs information-state strings")
        self.game = game
        self.blueprint = blueprint
        self.config = config
        self.num_actions = game.num_distinct_actions()
        self.rng = np.random.default_rng(seed)
        self._value_cache: dict[str, np.ndarray] = {}
        # info state -> [(history state, weight = chance x opponents' reach)], by a tree walk
        self.histories: dict[str, list[tuple[Any, float]]] = collections.defaultdict(list)
        self.info_player: dict[str, int] = {}
        self._nodes = 0
        self._walk(game.new_initial_state(), np.ones(game.num_players() + 1))

    # ------------------------------------------------------------------ beliefs
    def _walk(self, state: Any, reach: np.ndarray) -> None:
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise ConfigError(
                f"{self.game}: more than {MAX_NODES:,} histories; exact beliefs enumerate the "
                "tree, so search takes small games here (Kuhn, Leduc, 2x2 dark Hex)"
            )
        if state.is_terminal():
            return
        if state.is_chance_node():
            for a, p in state.chance_outcomes():
                r = reach.copy()
                r[-1] *= p
                self._walk(state.child(a), r)
            return
        p = state.current_player()
        key = state.information_state_string()
        others = np.prod(np.delete(reach, p))  # chance and the other players
        self.histories[key].append((state, float(others)))
        self.info_player[key] = p
        probs = policy_probs(self.blueprint, state, self.num_actions)
        for a in state.legal_actions():  # unreached histories too: a searched policy may
            r = reach.copy()  # reach what the blueprint does not
            r[p] *= probs[a]
            self._walk(state.child(a), r)

    def belief(self, info_state: str) -> tuple[list[Any], np.ndarray]:
        """Histories of ``info_state`` and their probabilities under the blueprint; where the
        blueprint never reaches it, the chance-only weights (the belief of any policy that
        does)."""
        hs = self.histories.get(info_state)
        if not hs:
            raise ConfigError(f"unknown information state {info_state!r}")
        w = np.array([x[1] for x in hs])
        if w.sum() <= 0:
            w = np.array([_chance_reach(h) for h, _ in hs])
        return [h for h, _ in hs], w / w.sum()

    # ------------------------------------------------------------------ values
    def value(self, state: Any) -> np.ndarray:
        """Exact expected returns of every player from ``state`` with everyone on the
        blueprint (memoised by history)."""
        if state.is_terminal():
            return np.asarray(state.returns(), float)
        key = state.history_str()
        v = self._value_cache.get(key)
        if v is not None:
            return v
        if state.is_chance_node():
            v = sum(p * self.value(state.child(a)) for a, p in state.chance_outcomes())
        else:
            probs = policy_probs(self.blueprint, state, self.num_actions)
            v = sum(probs[a] * self.value(state.child(a)) for a in state.legal_actions())
        self._value_cache[key] = v
        return v

    def _rollout(self, state: Any, rng: np.random.Generator) -> np.ndarray:
        """Returns of one blueprint rollout from ``state`` (a clone is stepped)."""
        s = state.clone()
        while not s.is_terminal():
            if s.is_chance_node():
                outcomes, probs = zip(*s.chance_outcomes(), strict=True)
            else:
                probs_all = policy_probs(self.blueprint, s, self.num_actions)
                outcomes = s.legal_actions()
                probs = probs_all[outcomes]
            probs = np.asarray(probs) / np.sum(probs)
            s.apply_action(int(outcomes[rng.choice(len(outcomes), p=probs)]))
        return np.asarray(s.returns(), float)

    def q_values(self, info_state: str) -> np.ndarray:
        """``[num_actions]`` action values of the acting player at ``info_state`` (0 at
        illegal actions): exact belief or ``samples`` draws from it, exact values or
        ``rollouts`` rollouts per (history, action) with the same streams for every action."""
        cfg = self.config
        hs, w = self.belief(info_state)
        player = self.info_player[info_state]
        if cfg.samples > 0:
            idx = self.rng.choice(len(hs), size=cfg.samples, p=w)
            hs, w = [hs[i] for i in idx], np.full(cfg.samples, 1.0 / cfg.samples)
        legal = hs[0].legal_actions()
        q = np.zeros(self.num_actions)
        seeds = self.rng.integers(0, 2**63 - 1, size=(len(hs), max(cfg.rollouts, 1)))
        for a in legal:
            total = 0.0
            for i, (h, wi) in enumerate(zip(hs, w, strict=True)):
                child = h.child(a)
                if cfg.rollouts == 0:
                    v = self.value(child)[player]
                else:  # common random numbers: stream (i, r) is the same for every action
                    v = np.mean(
                        [
                            self._rollout(child, np.random.default_rng(int(s)))[player]
                            for s in seeds[i]
                        ]
                    )
                total += wi * v
            q[a] = total
        return q

    def searched_probs(self, info_state: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(searched policy, blueprint policy, q)`` at ``info_state``, each ``[nA]``."""
        cfg = self.config
        state = self.histories[info_state][0][0]
        legal = np.zeros(self.num_actions, bool)
        legal[state.legal_actions()] = True
        pi = policy_probs(self.blueprint, state, self.num_actions)
        q = self.q_values(info_state)
        with np.errstate(divide="ignore"):
            log_pi = np.log(pi)
            magnet = log_pi if cfg.magnet == "blueprint" else None
        new = mmd_log_policy(log_pi, q, legal, cfg.eta, cfg.temperature, magnet)
        return np.where(legal, np.exp(new), 0.0), pi, q

    def act(self, state: Any) -> int:
        """The searched action at a decision ``state`` of a game being played."""
        probs, _, _ = self.searched_probs(state.information_state_string())
        if self.config.play == "argmax":
            return int(np.argmax(probs))
        return int(self.rng.choice(len(probs), p=probs / probs.sum()))


def _chance_reach(state: Any) -> float:
    """Probability of the chance events along ``state``'s history."""
    game = state.get_game()
    s = game.new_initial_state()
    p = 1.0
    for a in state.history():
        if s.is_chance_node():
            p *= dict(s.chance_outcomes())[a]
        s.apply_action(a)
    return p


def search_policy(search: OpenSpielSearch) -> Any:
    """The searched joint policy: the search applied at every information state, as an
    OpenSpiel ``TabularPolicy`` (``exploitability`` and ``expected_game_score`` read it)."""
    from open_spiel.python import policy as os_policy

    tab = os_policy.TabularPolicy(search.game)
    for info_state, idx in tab.state_lookup.items():
        probs, _, _ = search.searched_probs(info_state)
        tab.action_probability_array[idx] = probs
    return tab


def iterate_search(game: Any, config: SearchConfig, iterations: int, blueprint=None, seed=0):
    """Search applied at every information state, ``iterations`` times, each round's searched
    policy the next round's blueprint (from ``blueprint``, default uniform). Yields the policy
    after each round (round 0: the blueprint)."""
    from open_spiel.python import policy as os_policy

    pol = blueprint or os_policy.UniformRandomPolicy(game)
    yield pol
    for i in range(iterations):
        pol = search_policy(OpenSpielSearch(game, pol, config, seed=seed + i))
        yield pol
