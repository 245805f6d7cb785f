"""PettingZoo environments as a batch of copies in the array view (:mod:`marl.envs.core`).

:func:`pettingzoo_vector_env` turns a zero-argument factory of a PettingZoo ``ParallelEnv`` or
``AECEnv`` into :class:`PettingZooVectorEnv`: ``num_envs`` copies stepped together, whose
``reset`` / ``step`` return a :class:`~marl.envs.core.TimeStep` of numpy arrays with the copy
axis first (``obs [E, A, D] f32``, ``avail_actions [E, A, nA] bool``, ...).

Design
------
* All per-copy work (action dicts, padding, agent-id one-hot, action masks, global state,
  episode statistics, auto-reset) happens in :class:`_Copies`, which writes into preallocated
  ``[k, ...]`` numpy buffers, one row per copy. The main process only validates actions and
  copies the result arrays out.
* ``mode="async"``: ``num_workers`` worker processes, each holding ``k = ceil(num_envs /
  num_workers)`` copies. The TimeStep buffers and the actions live in shared memory
  (``[W * k, ...]``): the main process writes the actions, sends one byte to each worker,
  and each worker steps its copies straight into its rows and answers with an empty
  message. No pickling and no copies on the way; the main process reads the results as
  views. (The first version used gymnasium's ``AsyncVectorEnv``, which pickles the actions
  and copies every buffer through its shared-memory writer on each step: on 2 cores, mpe2
  ``simple_spread_v3`` with 8 copies stepped 1.40x faster with 2 workers than in-process,
  against 1.6x+ with this transport; see BENCHMARKS.md.) Several copies per process matter:
  one process per copy loses to a plain loop on a small machine. Re-measure with ``python
  scripts/bench.py --only pz`` or ``python -m marl.envs.pettingzoo_vector``.
* The copies reset themselves inside the step that ends an episode (``obs`` is then the next
  episode's first observation, as :mod:`marl.envs.core` says), so no step is lost or doubled.
* Errors: an exception inside a copy is caught in the worker, its traceback text travels back
  as the worker's reply and the main process raises one :class:`~marl.errors.WorkerError`
  naming ``spec.name``, the worker and the copy. A worker process that dies (``os._exit``,
  a segfault) breaks its pipe; that also becomes a ``WorkerError`` (with the exit code), never
  a hang. After a ``WorkerError`` the vector env is closed (processes terminated).
* ``mode="sync"``: one in-process :class:`_Copies` over all copies (same code path, no
  processes); ``unwrapped_envs`` gives the PettingZoo env of each copy.
* Worker processes start with ``fork`` by default, also when JAX runs in the main process
  (importing ``marl.envs`` starts JAX's CPU backend, through ``jaxmarl``): the workers only
  run the PettingZoo env in numpy and never touch the inherited JAX runtime, and ``fork``
  starts a worker in ~0.03 s. With ``forkserver``/``spawn`` each worker must import
  ``marl.envs`` (hence ``jaxmarl`` and ``jax``) again: measured ~8 s for 2 workers on a 2-core
  machine. Pass ``context="forkserver"`` (or ``"spawn"``) when the PettingZoo env itself uses
  JAX (e.g. a pure-JAX env exported to PettingZoo): a forked child cannot use the parent's
  JAX runtime. Those methods need the usual ``if __name__ == "__main__":`` guard in scripts.

Conventions (where PettingZoo leaves a choice)
-----------------------------------------------
* Absent agents (left the episode): ``alive`` False, the whole ``obs`` row zero (agent id too),
  ``reward`` 0, ``avail_actions`` only action 0 (discrete), their actions are ignored.
* AEC games (``aec_mode="turn"``): one vector step is one ``env.step`` by
  ``env.agent_selection``; every present agent gets ``env.observe(agent)``; non-acting agents
  have only action 0 legal and their action is ignored; ``reward`` is ``env.rewards`` after
  the step; agents terminated mid-game are stepped with ``None`` as PettingZoo requires.
* Seeding: ``reset(seed=s)`` resets copy ``i`` with seed ``s + i`` (and seeds its action
  spaces). The first ``reset(None)`` uses the constructor's ``seed`` (or a fresh random one),
  later ``reset(None)`` calls continue the environments' generators. Auto-resets pass no seed
  (``autoreset_seeding="continue"``) unless ``autoreset_seeding="derive"``, which reseeds each
  auto-reset from a per-copy generator seeded with ``s + i``: needed for environments whose
  ``reset(seed=None)`` reseeds from OS entropy (shimmy's OpenSpiel wrapper does), where
  "continue" would not reproduce.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
from gymnasium import spaces

from marl.envs.core import EnvSpec, TimeStep
from marl.errors import ActionError, ConfigError, MarlError, WorkerError

__all__ = ["PettingZooVectorEnv", "pettingzoo_vector_env"]

_WIN_KEYS = ("won", "win", "battle_won")
_FIELDS: tuple[str, ...] = TimeStep._fields
#: Buffers written by the copies: the TimeStep fields plus who may act next step.
_BUFFERS: tuple[str, ...] = (*_FIELDS, "acting")


# ---------------------------------------------------------------------------------------------
# Static description of the copies (built once in the main process, shipped to workers)
# ---------------------------------------------------------------------------------------------


class _Layout:
    """Everything a worker needs besides the env factory (picklable, no env objects)."""

    def __init__(
        self,
        spec: EnvSpec,
        kind: Literal["parallel", "aec"],
        obs_spaces: Sequence[spaces.Space],
        obs_is_dict: Sequence[bool],
        action_starts: Sequence[int],
        action_shapes: Sequence[tuple[int, ...]],
        state_from_env: bool,
        limit: int | None,
        autoreset_seeding: str,
    ) -> None:
        self.spec = spec
        self.kind = kind
        self.agents = spec.agents
        self.index = {a: j for j, a in enumerate(spec.agents)}
        self.num_agents = spec.num_agents
        self.obs_sizes = spec.obs_sizes
        self.raw_dim = spec.raw_obs_dim
        self.obs_dim = spec.obs_dim
        self.num_actions = spec.num_actions
        self.discrete = spec.action_type == "discrete"
        self.action_sizes = spec.action_sizes
        self.action_starts = tuple(int(s) for s in action_starts)
        self.action_shapes = tuple(tuple(s) for s in action_shapes)
        self.obs_spaces = tuple(obs_spaces)
        # A Box observation is flattened with reshape, anything else with gymnasium's flatten.
        self.obs_is_box = tuple(isinstance(s, spaces.Box) for s in obs_spaces)
        self.obs_is_dict = tuple(obs_is_dict)
        self.state_dim = spec.state_dim
        self.state_from_env = state_from_env
        self.state_offsets = tuple(int(x) for x in np.cumsum((0, *spec.obs_sizes)))
        self.limit = limit
        self.autoreset_seeding = autoreset_seeding

    def buffer_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        A, D, nA, S = self.num_agents, self.obs_dim, self.num_actions, self.state_dim
        return {
            "obs": ((A, D), np.float32),
            "avail_actions": ((A, nA), np.bool_),
            "state": ((S,), np.float32),
            "reward": ((A,), np.float32),
            "done": ((A,), np.bool_),
            "episode_done": ((), np.bool_),
            "truncated": ((), np.bool_),
            "alive": ((A,), np.bool_),
            "episode_return": ((A,), np.float32),
            "episode_length": ((), np.int32),
            "episode_won": ((), np.bool_),
            "acting": ((A,), np.bool_),
        }

    def empty_buffers(self, k: int) -> dict[str, np.ndarray]:
        return {
            name: np.zeros((k, *shape), dtype=dtype)
            for name, (shape, dtype) in self.buffer_shapes().items()
        }


def _unwrap(env: Any) -> Any:
    return getattr(env, "unwrapped", env)


def _is_parallel(env: Any) -> bool:
    from pettingzoo.utils.env import AECEnv, ParallelEnv

    if isinstance(env, ParallelEnv):
        return True
    if isinstance(env, AECEnv):
        return False
    if hasattr(env, "agent_selection") and hasattr(env, "observe"):
        return False
    if hasattr(env, "possible_agents") and hasattr(env, "step"):
        return True
    raise ConfigError(
        f"env_fn must build a PettingZoo ParallelEnv or AECEnv, got {type(env).__name__}"
    )


def _split_reset(out: Any) -> tuple[dict, dict]:
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        return out[0], out[1]
    return out, {}  # pre-1.22 PettingZoo returned observations only


def _try_state(env: Any) -> np.ndarray | None:
    try:
        state = env.state()
    except (NotImplementedError, AttributeError):
        return None
    return None if state is None else np.asarray(state, dtype=np.float32).reshape(-1)


def _build_layout(
    env_fn: Callable[[], Any],
    *,
    name: str | None,
    agent_id: bool,
    aec_mode: str,
    max_steps: int | None,
    has_win: bool,
    autoreset_seeding: str,
) -> _Layout:
    env = env_fn()
    try:
        kind: Literal["parallel", "aec"] = "parallel" if _is_parallel(env) else "aec"
        if kind == "aec" and aec_mode != "turn":
            raise ConfigError(f"aec_mode must be 'turn', got {aec_mode!r}")
        agents = tuple(env.possible_agents)
        if not agents:
            raise ConfigError("the environment has no possible_agents")
        base = _unwrap(env)
        env_name = name or env.metadata.get("name") or type(base).__name__
        game = getattr(base, "game_name", None)
        if name is None and isinstance(game, str) and game not in env_name:
            env_name = f"{env_name}/{game}"

        obs_spaces, obs_is_dict, obs_sizes = [], [], []
        for a in agents:
            space = env.observation_space(a)
            is_dict = isinstance(space, spaces.Dict) and "observation" in space.spaces
            if is_dict:
                space = space["observation"]
            obs_spaces.append(space)
            obs_is_dict.append(is_dict)
            obs_sizes.append(int(spaces.flatdim(space)))

        act_spaces = [env.action_space(a) for a in agents]
        if all(isinstance(s, spaces.Discrete) for s in act_spaces):
            action_type = "discrete"
            action_sizes = tuple(int(s.n) for s in act_spaces)
            starts = tuple(int(s.start) for s in act_spaces)
            low = high = None
        elif all(isinstance(s, spaces.Box) for s in act_spaces):
            action_type = "continuous"
            action_sizes = tuple(int(np.prod(s.shape)) for s in act_spaces)
            starts = (0,) * len(agents)
            n = max(action_sizes)
            low = tuple(
                tuple(float(x) for x in np.pad(s.low.reshape(-1), (0, n - len(s.low.reshape(-1)))))
                for s in act_spaces
            )
            high = tuple(
                tuple(
                    float(x) for x in np.pad(s.high.reshape(-1), (0, n - len(s.high.reshape(-1))))
                )
                for s in act_spaces
            )
        else:
            kinds = sorted({type(s).__name__ for s in act_spaces})
            raise ConfigError(
                f"{env_name}: unsupported action spaces {kinds}; all agents need Discrete or "
                "all Box action spaces"
            )

        env.reset(seed=0)
        state = _try_state(env)
        if state is not None:
            state_space = getattr(env, "state_space", None)
            shape = getattr(state_space, "shape", None)
            state_dim = int(np.prod(shape)) if shape else int(state.size)
            state_source = "env"
        else:
            state_dim = int(sum(obs_sizes))
            state_source = "concat_obs"

        limit = known = max_steps
        cycles = getattr(base, "max_cycles", None)
        if kind == "parallel" and isinstance(cycles, int | np.integer):
            known = int(cycles) if known is None else min(known, int(cycles))

        classes: dict[str, list[str]] = {}
        for a in agents:
            m = re.fullmatch(r"(.+?)_?\d+", a)
            classes.setdefault(m.group(1) if m else a, []).append(a)

        spec = EnvSpec(
            name=str(env_name),
            agents=agents,
            obs_sizes=tuple(obs_sizes),
            agent_id=agent_id,
            action_type=action_type,
            action_sizes=action_sizes,
            state_dim=state_dim,
            state_source=state_source,
            max_steps=known,
            has_win=has_win,
            turn_based=kind == "aec",
            action_low=low,
            action_high=high,
            agent_classes={k: tuple(v) for k, v in classes.items()},
        )
        return _Layout(
            spec,
            kind,
            obs_spaces,
            obs_is_dict,
            starts,
            [getattr(s, "shape", ()) for s in act_spaces],
            state_source == "env",
            limit,
            autoreset_seeding,
        )
    finally:
        try:
            env.close()
        except Exception:  # a failing close of the probe env is harmless
            pass


# ---------------------------------------------------------------------------------------------
# The copies: per-copy logic writing into [k, ...] buffers (runs in a worker or in-process)
# ---------------------------------------------------------------------------------------------


class _CopyFailure(Exception):
    """An exception raised by copy ``copy`` (global index), with its traceback text."""

    def __init__(self, copy: int, trace: str) -> None:
        super().__init__(copy, trace)
        self.copy = copy
        self.trace = trace


class _Copies:
    """``k`` PettingZoo copies with global indices ``first .. first + k - 1``."""

    def __init__(
        self,
        env_fn: Callable[[], Any],
        layout: _Layout,
        first: int,
        count: int,
        bufs: dict[str, np.ndarray],
    ) -> None:
        self.env_fn = env_fn
        self.L = layout
        self.first = first
        self.count = count
        self.bufs = bufs
        self.envs: list[Any] = []
        A = layout.num_agents
        self.live = np.zeros((count, A), dtype=bool)
        self.ep_return = np.zeros((count, A), dtype=np.float64)
        self.ep_len = np.zeros(count, dtype=np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * count
        # Id block of the observation and the avail rows for agents without a choice.
        self.id_block = np.eye(A, dtype=np.float32) if layout.spec.agent_id else None
        self.only_noop = np.zeros(layout.num_actions, dtype=bool)
        self.only_noop[0] = True
        self.all_legal = layout.spec.action_mask()  # [A, nA]

    # -- lifecycle --------------------------------------------------------------------------

    def _guard(self, c: int, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(c, *args)
        except Exception:  # reported with its traceback to the main process
            raise _CopyFailure(self.first + c, traceback.format_exc()) from None

    def _make_envs(self) -> None:
        while len(self.envs) < self.count:
            c = len(self.envs)
            try:
                self.envs.append(self.env_fn())
            except Exception:
                raise _CopyFailure(self.first + c, traceback.format_exc()) from None

    def close(self) -> None:
        for env in self.envs:
            try:
                env.close()
            except Exception:  # closing must not raise
                pass
        self.envs = []

    # -- reset / step -----------------------------------------------------------------------

    def reset(self, seed: int | None) -> None:
        """Reset every copy; copy ``i`` (global) gets ``seed + i`` when ``seed`` is given."""
        self._make_envs()
        b = self.bufs
        for name in (
            "reward",
            "done",
            "episode_done",
            "truncated",
            "episode_return",
            "episode_length",
            "episode_won",
        ):
            b[name][:] = 0
        for c in range(self.count):
            s = None if seed is None else seed + self.first + c
            self._guard(c, self._reset_copy, s)

    def step(self, actions: np.ndarray) -> None:
        b = self.bufs
        b["reward"][:] = 0.0
        b["done"][:] = False
        b["episode_done"][:] = False
        b["truncated"][:] = False
        b["episode_return"][:] = 0.0
        b["episode_length"][:] = 0
        b["episode_won"][:] = False
        step = self._step_parallel if self.L.kind == "parallel" else self._step_aec
        for c in range(self.count):
            self._guard(c, step, actions[c])

    def _reset_copy(self, c: int, seed: int | None) -> None:
        env = self.envs[c]
        if seed is not None:
            self.rngs[c] = np.random.default_rng(seed)
            for j, a in enumerate(self.L.agents):
                try:  # a distinct stream per agent, derived from the copy's seed
                    sub = np.random.SeedSequence([seed, j]).generate_state(1)[0]
                    env.action_space(a).seed(int(sub))
                except Exception:  # seeding the action space is optional
                    pass
        elif self.L.autoreset_seeding == "derive" and self.rngs[c] is not None:
            seed = int(self.rngs[c].integers(2**31 - 1))
        self.ep_return[c] = 0.0
        self.ep_len[c] = 0
        if self.L.kind == "parallel":
            obs, infos = _split_reset(env.reset(seed=seed) if seed is not None else env.reset())
            live = self.live[c]
            live[:] = False
            present = set(env.agents)
            for j, a in enumerate(self.L.agents):
                live[j] = a in present
            self._write_parallel(c, obs, infos)
        else:
            if seed is not None:
                env.reset(seed=seed)
            else:
                env.reset()
            self._skip_dead_aec(env)
            self._aec_live(c, env)
            self._write_aec(c, env)

    # -- parallel ---------------------------------------------------------------------------

    def _env_actions(self, act: np.ndarray, js: Sequence[int]) -> dict[str, Any]:
        L = self.L
        if L.discrete:
            return {L.agents[j]: int(act[j]) + L.action_starts[j] for j in js}
        return {L.agents[j]: act[j, : L.action_sizes[j]].reshape(L.action_shapes[j]) for j in js}

    def _step_parallel(self, c: int, act: np.ndarray) -> None:
        L, b, env = self.L, self.bufs, self.envs[c]
        live = self.live[c]
        js = np.flatnonzero(live).tolist()
        obs, rew, term, trunc, infos = env.step(self._env_actions(act, js))
        reward = b["reward"][c]
        for j in js:
            reward[j] = rew.get(L.agents[j], 0.0)
        any_term, any_trunc = self._update_live(live, set(env.agents), term, trunc)
        self._account(c, js, live)
        if self._end_if_over(c, live, any_term, any_trunc, infos):
            return
        self._write_parallel(c, obs, infos)

    def _update_live(
        self, live: np.ndarray, present: set, term: dict, trunc: dict
    ) -> tuple[bool, bool]:
        """Recompute ``live``; whether an agent that was live terminated / was truncated."""
        any_term = any_trunc = False
        for j, a in enumerate(self.L.agents):
            t, u = bool(term.get(a, False)), bool(trunc.get(a, False))
            now = a in present and not (t or u)
            if live[j] and not now:
                any_term |= t or not u  # leaving without a flag counts as terminated
                any_trunc |= u
            live[j] = now
        return any_term, any_trunc

    def _write_parallel(self, c: int, obs: dict, infos: dict) -> None:
        L, b = self.L, self.bufs
        o, avail, live = b["obs"][c], b["avail_actions"][c], self.live[c]
        o[:] = 0.0
        for j, a in enumerate(L.agents):
            if not live[j]:
                if L.discrete:
                    avail[j] = self.only_noop
                else:
                    avail[j] = self.all_legal[j]
                continue
            mask = self._put_obs_dict(o, j, obs.get(a))
            if L.discrete:
                if mask is None:
                    info = infos.get(a)
                    mask = info.get("action_mask") if isinstance(info, dict) else None
                self._put_mask(avail, j, mask)
            else:
                avail[j] = self.all_legal[j]
        if self.id_block is not None:
            o[:, L.raw_dim :] = self.id_block * live[:, None]
        b["alive"][c] = live
        b["acting"][c] = live
        self._write_state(c, self.envs[c])

    # -- AEC (turn-based) -------------------------------------------------------------------

    @staticmethod
    def _skip_dead_aec(env: Any) -> None:
        """Step ``None`` for terminated agents in turn while a living agent remains."""
        while env.agents:
            term, trunc = env.terminations, env.truncations
            sel = env.agent_selection
            if not (term.get(sel, False) or trunc.get(sel, False)):
                return
            if all(term.get(a, False) or trunc.get(a, False) for a in env.agents):
                return  # nobody left to act: the episode is over
            env.step(None)

    def _aec_live(self, c: int, env: Any) -> None:
        live = self.live[c]
        present = set(env.agents)
        term, trunc = env.terminations, env.truncations
        for j, a in enumerate(self.L.agents):
            live[j] = a in present and not (term.get(a, False) or trunc.get(a, False))

    def _step_aec(self, c: int, act: np.ndarray) -> None:
        L, b, env = self.L, self.bufs, self.envs[c]
        live = self.live[c]
        js = np.flatnonzero(live).tolist()
        sel = env.agent_selection
        env.step(self._env_actions(act, (L.index[sel],))[sel])
        reward, rewards = b["reward"][c], env.rewards
        for j in js:
            reward[j] = rewards.get(L.agents[j], 0.0)
        any_term, any_trunc = self._update_live(
            live, set(env.agents), env.terminations, env.truncations
        )
        self._account(c, js, live)
        if self._end_if_over(c, live, any_term, any_trunc, env.infos):
            return
        self._skip_dead_aec(env)
        self._aec_live(c, env)
        self._write_aec(c, env)

    def _write_aec(self, c: int, env: Any) -> None:
        L, b = self.L, self.bufs
        o, avail, live, acting = b["obs"][c], b["avail_actions"][c], self.live[c], b["acting"][c]
        o[:] = 0.0
        acting[:] = False
        sel = env.agent_selection
        for j, a in enumerate(L.agents):
            if not live[j]:
                avail[j] = self.only_noop if L.discrete else self.all_legal[j]
                continue
            mask = self._put_obs_dict(o, j, env.observe(a))
            if a == sel:
                acting[j] = True
                if L.discrete:
                    if mask is None:
                        info = env.infos.get(a)
                        mask = info.get("action_mask") if isinstance(info, dict) else None
                    self._put_mask(avail, j, mask)
                else:
                    avail[j] = self.all_legal[j]
            else:
                avail[j] = self.only_noop if L.discrete else self.all_legal[j]
        if self.id_block is not None:
            o[:, L.raw_dim :] = self.id_block * live[:, None]
        b["alive"][c] = live
        self._write_state(c, env)

    # -- shared helpers ---------------------------------------------------------------------

    def _put_obs_dict(self, o: np.ndarray, j: int, x: Any) -> Any:
        """Write agent ``j``'s observation (plain, or a dict with ``"observation"`` and
        ``"action_mask"``); return the mask found in it, if any."""
        mask = None
        if self.L.obs_is_dict[j] and isinstance(x, dict):
            mask = x.get("action_mask")
            x = x["observation"]
        if x is not None:
            self._put_obs(o, j, x)
        return mask

    def _put_obs(self, o: np.ndarray, j: int, x: Any) -> None:
        L = self.L
        n = L.obs_sizes[j]
        if L.obs_is_box[j]:
            o[j, :n] = np.asarray(x, dtype=np.float32).reshape(-1)
        else:
            o[j, :n] = np.asarray(spaces.flatten(L.obs_spaces[j], x), dtype=np.float32)

    def _put_mask(self, avail: np.ndarray, j: int, mask: Any) -> None:
        n = self.L.action_sizes[j]
        if mask is None:
            avail[j] = self.all_legal[j]
        else:
            avail[j, :n] = np.asarray(mask).reshape(-1)[:n] != 0
            avail[j, n:] = False

    def _write_state(self, c: int, env: Any) -> None:
        L = self.L
        if L.state_from_env:
            self.bufs["state"][c] = np.asarray(env.state(), dtype=np.float32).reshape(-1)
        else:
            o, st, off = self.bufs["obs"][c], self.bufs["state"][c], L.state_offsets
            for j in range(L.num_agents):
                st[off[j] : off[j + 1]] = o[j, : L.obs_sizes[j]]

    def _account(self, c: int, js: list[int], live: np.ndarray) -> None:
        b = self.bufs
        self.ep_return[c] += b["reward"][c]
        self.ep_len[c] += 1
        done = b["done"][c]
        for j in js:
            done[j] = not live[j]

    def _end_if_over(
        self, c: int, live: np.ndarray, any_term: bool, any_trunc: bool, infos: Any
    ) -> bool:
        """Finish the episode of copy ``c`` if it ended (or hit ``max_steps``), auto-reset."""
        b, L = self.bufs, self.L
        limit_hit = L.limit is not None and self.ep_len[c] >= L.limit
        if live.any() and not limit_hit:
            return False
        if live.any():  # our own time limit: every remaining agent is truncated
            b["done"][c] |= live
            live[:] = False
            any_trunc = True
        b["episode_done"][c] = True
        b["truncated"][c] = any_trunc and not any_term
        b["episode_return"][c] = self.ep_return[c]
        b["episode_length"][c] = self.ep_len[c]
        b["episode_won"][c] = _won(infos)
        self._reset_copy(c, None)
        return True


def _won(infos: Any) -> bool:
    if not isinstance(infos, dict):
        return False
    for info in infos.values():
        if isinstance(info, dict):
            for k in _WIN_KEYS:
                v = info.get(k)
                if v is not None and np.any(v):
                    return True
    return False


# ---------------------------------------------------------------------------------------------
# Worker processes: each steps k copies straight into shared memory
# ---------------------------------------------------------------------------------------------


def _shared(ctx: Any, shape: tuple[int, ...], dtype: Any) -> tuple[Any, np.ndarray]:
    """A zeroed shared-memory block and its numpy view."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    raw = ctx.RawArray("b", max(1, n * dtype.itemsize))
    return raw, _view(raw, shape, dtype)


def _view(raw: Any, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64))
    return np.frombuffer(raw, dtype=dtype, count=n).reshape(shape)


def _pool_worker(
    payload: bytes,
    layout: _Layout,
    index: int,
    k: int,
    count: int,
    conn: Any,
    raws: dict[str, Any],
    shapes: dict[str, tuple[tuple[int, ...], Any]],
) -> None:
    """Worker ``index``: copies ``index * k ..`` writing rows of the shared buffers.

    Commands (bytes): ``S`` step with the actions in shared memory, ``R<seed>`` reset,
    ``C`` close. Reply: empty when done, ``E<copy>\n<traceback>`` when a copy raised.
    """
    import cloudpickle

    try:
        env_fn = cloudpickle.loads(payload)
        rows = slice(index * k, index * k + count)
        bufs = {n: _view(raws[n], shape, dt)[rows] for n, (shape, dt) in shapes.items()}
        actions = bufs.pop("actions")
        copies = _Copies(env_fn, layout, index * k, count, bufs)
        while True:
            msg = conn.recv_bytes()
            cmd = msg[:1]
            if cmd == b"C":
                copies.close()
                conn.send_bytes(b"")
                return
            try:
                if cmd == b"S":
                    copies.step(actions)
                else:
                    copies.reset(int(msg[1:]) if len(msg) > 1 else None)
            except _CopyFailure as e:
                conn.send_bytes(b"E" + f"{e.copy}\n{e.trace}".encode())
                continue
            conn.send_bytes(b"")
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # the main process went away or interrupted us: just end
    finally:
        conn.close()


class _Pool:
    """``W`` worker processes with ``k`` copies each; the TimeStep buffers and the actions
    live in shared memory (``[W * k, ...]``), and a step costs one byte each way per worker.
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        layout: _Layout,
        num_envs: int,
        workers: int,
        k: int,
        context: str | None,
    ) -> None:
        import cloudpickle

        ctx = multiprocessing.get_context(context)
        n = workers * k
        shapes = {name: ((n, *shape), dt) for name, (shape, dt) in layout.buffer_shapes().items()}
        if layout.discrete:
            shapes["actions"] = ((n, layout.num_agents), np.int64)
        else:
            shapes["actions"] = ((n, layout.num_agents, layout.num_actions), np.float32)
        raws, views = {}, {}
        for name, (shape, dt) in shapes.items():
            raws[name], views[name] = _shared(ctx, shape, dt)
        self.actions = views.pop("actions")[:num_envs]
        self.bufs = {name: v[:num_envs] for name, v in views.items()}
        payload = cloudpickle.dumps(env_fn)
        self.conns: list[Any] = []
        self.processes: list[multiprocessing.Process] = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            count = min(k, num_envs - w * k)
            proc = ctx.Process(
                target=_pool_worker,
                args=(payload, layout, w, k, count, child, raws, shapes),
                name=f"marl-pz-worker-{w}",
                daemon=True,
            )
            with warnings.catch_warnings():  # fork with JAX's threads: safe here (module doc)
                warnings.simplefilter("ignore", RuntimeWarning)
                proc.start()
            child.close()  # only the worker holds its end: its death is our EOFError
            self.conns.append(parent)
            self.processes.append(proc)

    def command(self, msg: bytes, timeout: float | None) -> list[tuple[int, bytes]]:
        """Send ``msg`` to every worker and wait for all; the error replies ``(worker, text)``.
        Raises ``multiprocessing.TimeoutError`` or the pipe's error when a worker is gone."""
        for c in self.conns:
            c.send_bytes(msg)
        errors = []
        for w, c in enumerate(self.conns):
            if timeout is not None and not c.poll(timeout):
                raise multiprocessing.TimeoutError
            reply = c.recv_bytes()
            if reply:
                errors.append((w, reply[1:]))
        return errors

    def close(self, terminate: bool, timeout: float = 5.0) -> None:
        if not terminate:
            try:
                self.command(b"C", timeout)
            except Exception:  # a worker that cannot close cleanly is terminated below
                terminate = True
        for p in self.processes:
            if terminate and p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join(timeout=timeout)
            if p.is_alive():  # a worker stuck in its env's close()
                p.kill()
                p.join(timeout=timeout)
        for c in self.conns:
            c.close()


# ---------------------------------------------------------------------------------------------
# The public vector env
# ---------------------------------------------------------------------------------------------


class PettingZooVectorEnv:
    """``num_envs`` copies of a PettingZoo environment in the array view.

    Build it with :func:`pettingzoo_vector_env`. ``reset``/``step`` return a
    :class:`~marl.envs.core.TimeStep` of fresh numpy arrays (copy axis first).
    """

    def __init__(
        self,
        env_fn: Callable[[], Any],
        num_envs: int,
        layout: _Layout,
        *,
        mode: Literal["async", "sync"],
        num_workers: int,
        seed: int | None,
        context: str | None,
        step_timeout: float | None,
    ) -> None:
        self.spec: EnvSpec = layout.spec
        self.num_envs = num_envs
        self.mode = mode
        self._layout = layout
        self._closed = False
        self._pool: _Pool | None = None
        self._copies: _Copies | None = None
        self._timeout = step_timeout
        self._default_seed = seed
        self._seeded = False
        self._ready = False
        spec = self.spec
        self._sizes = np.asarray(spec.action_sizes, dtype=np.int64)
        if spec.action_type == "continuous":
            self._low = np.asarray(spec.action_low, dtype=np.float32)
            self._high = np.asarray(spec.action_high, dtype=np.float32)
            self._real = spec.action_mask()
        self._acting = np.zeros((num_envs, spec.num_agents), dtype=bool)
        self._avail = np.zeros((num_envs, spec.num_agents, spec.num_actions), dtype=bool)

        if mode == "sync":
            self.num_workers = 1
            self._k = num_envs
            self._bufs = layout.empty_buffers(num_envs)
            self._copies = _Copies(env_fn, layout, 0, num_envs, self._bufs)
            return

        self._k = k = math.ceil(num_envs / num_workers)
        self.num_workers = workers = math.ceil(num_envs / k)
        try:
            self._pool = _Pool(env_fn, layout, num_envs, workers, k, context)
        except Exception as e:  # e.g. an env_fn that cannot be pickled
            self._closed = True
            raise WorkerError(
                f"environment {self.spec.name!r}: could not start {workers} worker processes "
                f"(context {context!r}): {type(e).__name__}: {e}"
            ) from e
        self._bufs = self._pool.bufs

    # -- public API -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def unwrapped_envs(self) -> list[Any]:
        """The PettingZoo env of each copy (``mode="sync"`` only; built at the first reset)."""
        if self._copies is None:
            raise MarlError("unwrapped_envs is only available with mode='sync'")
        return list(self._copies.envs)

    @property
    def processes(self) -> list[multiprocessing.Process]:
        """The worker processes (``mode="async"``; empty for ``"sync"``)."""
        return list(self._pool.processes) if self._pool is not None else []

    def reset(self, seed: int | None = None) -> TimeStep:
        """Reset every copy (copy ``i`` with ``seed + i``) and return the first TimeStep."""
        self._check_open()
        if seed is None and not self._seeded:
            seed = self._default_seed
            if seed is None:
                seed = int(np.random.SeedSequence().entropy % (2**31 - 2**20))
        if seed is not None:
            if not isinstance(seed, int | np.integer) or isinstance(seed, bool):
                raise ConfigError(f"seed must be an int or None, got {seed!r}")
            seed = int(seed)
            self._seeded = True
        if self._copies is not None:
            self._run_sync(self._copies.reset, seed)
        else:
            # every worker adds the global index of its copies to the base seed
            self._run_async("reset", b"R" + (b"" if seed is None else str(seed).encode()))
        self._ready = True
        return self._collect()

    def step(self, actions: Any) -> TimeStep:
        """Step every copy with ``actions`` (``int [E, A]`` or ``float [E, A, nA]``)."""
        self._check_open()
        if not self._ready:
            raise MarlError(f"{self.spec.name}: call reset() before step()")
        actions = self._validate(actions)
        if self._copies is not None:
            self._run_sync(self._copies.step, actions)
        else:
            np.copyto(self._pool.actions, actions)
            self._run_async("step", b"S")
        return self._collect()

    def close(self) -> None:
        """Release the copies and the worker processes (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._ready = False
        if self._copies is not None:
            self._copies.close()
        if self._pool is not None:
            self._shutdown(terminate=False)

    def __enter__(self) -> PettingZooVectorEnv:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_closed", True):
            return
        try:
            self._closed = True
            if getattr(self, "_pool", None) is not None:
                self._shutdown(terminate=True)
            elif getattr(self, "_copies", None) is not None:
                self._copies.close()
        except Exception:  # never raise from __del__
            pass

    def __repr__(self) -> str:
        return (
            f"PettingZooVectorEnv({self.spec.name!r}, num_envs={self.num_envs}, "
            f"mode={self.mode!r}, num_workers={self.num_workers})"
        )

    # -- internals --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise MarlError(f"{self.spec.name}: the vector env is closed")

    def _collect(self) -> TimeStep:
        b = self._bufs
        np.copyto(self._acting, b["acting"])
        np.copyto(self._avail, b["avail_actions"])
        return TimeStep(*(np.array(b[n]) for n in _FIELDS))

    def _run_sync(self, fn: Callable[[Any], None], arg: Any) -> None:
        try:
            fn(arg)
        except _CopyFailure as e:
            self.close()
            raise WorkerError(self._failure_text(0, e.copy, e.trace)) from None

    def _run_async(self, what: str, msg: bytes) -> None:
        try:
            errors = self._pool.command(msg, self._timeout)
        except (EOFError, BrokenPipeError, ConnectionError, OSError) as e:
            text = self._dead_worker_text(e)
            self._abort()
            raise WorkerError(text) from None
        except multiprocessing.TimeoutError:
            self._abort()
            raise WorkerError(
                f"environment {self.spec.name!r}: a worker did not answer {what}() within "
                f"{self._timeout} s; all workers were terminated"
            ) from None
        if errors:
            w, text = errors[0]
            copy, trace = text.decode(errors="replace").split("\n", 1)
            self._abort()
            raise WorkerError(self._failure_text(w, int(copy), trace))

    def _failure_text(self, worker: int, copy: int, trace: str) -> str:
        return (
            f"environment {self.spec.name!r}: copy {copy} (worker {worker}) raised an "
            f"exception:\n{trace.rstrip()}"
        )

    def _dead_worker_text(self, err: BaseException) -> str:
        procs = self._pool.processes
        deadline = time.monotonic() + 2.0
        dead: list[int] = []
        while True:
            dead = [i for i, p in enumerate(procs) if not p.is_alive()]
            if dead or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        if not dead:
            return (
                f"environment {self.spec.name!r}: lost the connection to a worker "
                f"({type(err).__name__}: {err})"
            )
        parts = []
        for w in dead:
            lo = w * self._k
            hi = min(lo + self._k, self.num_envs) - 1
            parts.append(f"worker {w} (copies {lo}-{hi}) exit code {procs[w].exitcode}")
        return f"environment {self.spec.name!r}: worker process died unexpectedly: " + "; ".join(
            parts
        )

    def _abort(self) -> None:
        self._closed = True
        self._ready = False
        self._shutdown(terminate=True)

    def _shutdown(self, terminate: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(terminate)

    def _validate(self, actions: Any) -> np.ndarray:
        spec = self.spec
        E, A, nA = self.num_envs, spec.num_agents, spec.num_actions
        try:
            a = np.asarray(actions)
        except Exception as e:
            raise ActionError(f"{spec.name}: actions are not an array ({e})") from None
        if spec.action_type == "discrete":
            if a.shape != (E, A):
                raise ActionError(
                    f"{spec.name}: discrete actions must have shape [num_envs, num_agents] = "
                    f"{[E, A]}, got {list(a.shape)} (agents {list(spec.agents)})"
                )
            if a.dtype == np.bool_ or not np.issubdtype(a.dtype, np.integer):
                raise ActionError(
                    f"{spec.name}: discrete actions must have an integer dtype, got {a.dtype} "
                    f"(agents {list(spec.agents)})"
                )
            act = self._acting
            a64 = a.astype(np.int64, copy=False)
            bad = act & ((a64 < 0) | (a64 >= self._sizes))
            if bad.any():
                e, j = (int(x) for x in np.argwhere(bad)[0])
                raise ActionError(
                    f"{spec.name}: copy {e}, agent {spec.agents[j]!r}: action {int(a64[e, j])} "
                    f"is out of range [0, {int(self._sizes[j])})"
                )
            legal = np.take_along_axis(self._avail, np.clip(a64, 0, nA - 1)[..., None], 2)[..., 0]
            bad = act & ~legal
            if bad.any():
                e, j = (int(x) for x in np.argwhere(bad)[0])
                allowed = np.flatnonzero(self._avail[e, j]).tolist()
                raise ActionError(
                    f"{spec.name}: copy {e}, agent {spec.agents[j]!r}: action {int(a64[e, j])} "
                    f"is illegal under the action mask (legal: {allowed})"
                )
            return a64
        if a.shape != (E, A, nA):
            raise ActionError(
                f"{spec.name}: continuous actions must have shape [num_envs, num_agents, "
                f"action_dim] = {[E, A, nA]}, got {list(a.shape)} (agents {list(spec.agents)})"
            )
        if a.dtype == np.bool_ or not (
            np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
        ):
            raise ActionError(
                f"{spec.name}: continuous actions must be real numbers, got dtype {a.dtype}"
            )
        a32 = a.astype(np.float32)
        check = self._acting[:, :, None] & self._real[None]
        bad = check & ~np.isfinite(a32)
        if bad.any():
            e, j, d = (int(x) for x in np.argwhere(bad)[0])
            raise ActionError(
                f"{spec.name}: copy {e}, agent {spec.agents[j]!r}: action dimension {d} is "
                f"{a32[e, j, d]} (not finite)"
            )
        bad = check & ((a32 < self._low) | (a32 > self._high))
        if bad.any():
            e, j, d = (int(x) for x in np.argwhere(bad)[0])
            raise ActionError(
                f"{spec.name}: copy {e}, agent {spec.agents[j]!r}: action dimension {d} = "
                f"{float(a32[e, j, d])} is outside [{float(self._low[j, d])}, "
                f"{float(self._high[j, d])}]"
            )
        return a32


def _default_context() -> str | None:
    methods = multiprocessing.get_all_start_methods()
    return "fork" if "fork" in methods else None


def _cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def pettingzoo_vector_env(
    env_fn: Callable[[], Any],
    num_envs: int,
    *,
    name: str | None = None,
    mode: Literal["async", "sync"] = "async",
    num_workers: int | None = None,
    agent_id: bool = True,
    seed: int | None = None,
    aec_mode: Literal["turn"] = "turn",
    max_steps: int | None = None,
    has_win: bool = False,
    autoreset_seeding: Literal["continue", "derive"] = "continue",
    context: str | None = "default",
    step_timeout: float | None = None,
) -> PettingZooVectorEnv:
    """Batch ``num_envs`` copies of the PettingZoo env built by ``env_fn``.

    Args:
        env_fn: zero-argument factory of a PettingZoo ``ParallelEnv`` or ``AECEnv`` (picklable
            with cloudpickle for ``mode="async"``: lambdas and closures are fine).
        num_envs: number of copies ``E``.
        name: ``spec.name`` (default: the env's ``metadata["name"]``).
        mode: ``"async"`` (worker processes) or ``"sync"`` (in-process, for debugging).
        num_workers: worker processes for ``"async"`` (default: ``num_envs`` or the cores
            given to this process, the fewer); each holds ``ceil(num_envs / num_workers)``
            copies.
        agent_id: append a one-hot agent id to each observation.
        seed: seed of the first ``reset(None)`` (default: a random one).
        aec_mode: how AEC envs are stepped; only ``"turn"`` (one agent per vector step).
        max_steps: extra time limit in vector steps (episodes end truncated); also
            ``spec.max_steps`` (default: the env's ``max_cycles`` for parallel envs).
        has_win: sets ``spec.has_win`` (wins are read from infos ``won``/``win``/``battle_won``).
        autoreset_seeding: ``"continue"`` (auto-resets pass no seed) or ``"derive"`` (seeds
            drawn from a per-copy generator; see the module docstring).
        context: multiprocessing start method (``"default"``: ``fork`` where available; use
            ``"forkserver"`` or ``"spawn"`` when the env itself runs JAX, see the module doc).
        step_timeout: seconds to wait for the workers before a ``WorkerError`` (None: forever).
    """
    if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be a positive int, got {num_envs!r}")
    if mode not in ("async", "sync"):
        raise ConfigError(f"mode must be 'async' or 'sync', got {mode!r}")
    if aec_mode != "turn":
        raise ConfigError(f"aec_mode must be 'turn', got {aec_mode!r}")
    if autoreset_seeding not in ("continue", "derive"):
        raise ConfigError(
            f"autoreset_seeding must be 'continue' or 'derive', got {autoreset_seeding!r}"
        )
    if max_steps is not None and (not isinstance(max_steps, int) or max_steps < 1):
        raise ConfigError(f"max_steps must be a positive int or None, got {max_steps!r}")
    if num_workers is None:
        num_workers = min(num_envs, _cores())
    if not isinstance(num_workers, int) or num_workers < 1:
        raise ConfigError(f"num_workers must be a positive int, got {num_workers!r}")
    num_workers = min(num_workers, num_envs)
    layout = _build_layout(
        env_fn,
        name=name,
        agent_id=agent_id,
        aec_mode=aec_mode,
        max_steps=max_steps,
        has_win=has_win,
        autoreset_seeding=autoreset_seeding,
    )
    if context == "default":
        context = _default_context()
    return PettingZooVectorEnv(
        env_fn,
        num_envs,
        layout,
        mode=mode,
        num_workers=num_workers,
        seed=seed,
        context=context,
        step_timeout=step_timeout,
    )


# ---------------------------------------------------------------------------------------------
# Throughput: python -m marl.envs.pettingzoo_vector [num_envs] [steps] [rounds]
# ---------------------------------------------------------------------------------------------


def _benchmark(num_envs: int = 8, steps: int = 600, rounds: int = 3) -> dict[str, float]:
    """Env-steps/s of mpe2 simple_spread_v3 (best of ``rounds`` blocks of ``steps`` steps)."""
    from mpe2 import simple_spread_v3

    def make() -> Any:
        return simple_spread_v3.parallel_env(max_cycles=25)

    acts = np.random.default_rng(0).integers(0, 5, size=(steps, num_envs, 3))
    out: dict[str, float] = {}

    envs = [make() for _ in range(num_envs)]
    for i, e in enumerate(envs):
        e.reset(seed=i)
    best = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for t in range(steps):
            for i, e in enumerate(envs):
                if not e.agents:
                    e.reset()
                e.step({a: int(acts[t, i, j]) for j, a in enumerate(e.possible_agents)})
        best = max(best, steps * num_envs / (time.perf_counter() - t0))
    out["plain loop"] = best

    configs: list[tuple[str, dict[str, Any]]] = [("sync", {"mode": "sync"})]
    for w in sorted({1, 2, num_envs}):
        configs.append((f"async {w} workers", {"mode": "async", "num_workers": w}))
    for label, kw in configs:
        with pettingzoo_vector_env(make, num_envs, **kw) as venv:
            venv.reset(seed=0)
            for t in range(10):
                venv.step(acts[t])
            best = 0.0
            for _ in range(rounds):
                t0 = time.perf_counter()
                for t in range(steps):
                    venv.step(acts[t])
                best = max(best, steps * num_envs / (time.perf_counter() - t0))
            out[label] = best
    return out


if __name__ == "__main__":  # pragma: no cover - manual measurement
    args = [int(x) for x in sys.argv[1:4]]
    for label, sps in _benchmark(*args).items():
        print(f"{label:>20}: {sps:10.0f} env-steps/s")
