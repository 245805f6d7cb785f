"""Tiny PettingZoo environments for the tests of :mod:`marl.envs.pettingzoo_vector`."""

from __future__ import annotations

import os
import time

import numpy as np
from gymnasium import spaces
from pettingzoo.utils.env import AECEnv, ParallelEnv


class LeavingEnv(ParallelEnv):
    """Three agents; ``b_1`` leaves (terminates) at step ``leave_at``; episodes last ``length``.

    Observation of agent ``j`` at step ``t``: ``[t, j + 1]`` (agent ``c_2`` has a third feature
    ``seed``). Reward of agent ``j``: ``j + 1`` per step. Action 2 is illegal (mask in infos).
    ``crash`` = ``(seed, step, how)``: the copy reset with that seed fails at that step, by
    raising (``how="raise"``), by killing its process (``how="exit"``) or by hanging
    (``how="hang"``).
    """

    metadata = {"name": "leaving_v0"}

    def __init__(self, leave_at: int = 2, length: int = 4, crash=None, win: bool = False):
        self.possible_agents = ["a_0", "b_1", "c_2"]
        self.leave_at, self.length, self.crash, self.win = leave_at, length, crash, win
        self.received: list[dict] = []
        self.seed_ = None
        self.t = 0

    def observation_space(self, agent):
        return spaces.Box(-np.inf, np.inf, (3 if agent == "c_2" else 2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(3)

    def _obs(self):
        out = {}
        for a in self.agents:
            j = self.possible_agents.index(a)
            x = [self.t, j + 1] + ([self.seed_ or 0] if a == "c_2" else [])
            out[a] = np.asarray(x, np.float32)
        return out

    def _infos(self):
        return {a: {"action_mask": np.array([1, 1, 0], np.int8)} for a in self.agents}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.seed_ = seed
        self.t = 0
        self.agents = list(self.possible_agents)
        return self._obs(), self._infos()

    def step(self, actions):
        self.received.append(dict(actions))
        self.t += 1
        if self.crash is not None and self.crash[0] == self.seed_ and self.crash[1] == self.t:
            if self.crash[2] == "exit":
                os._exit(3)
            if self.crash[2] == "hang":
                time.sleep(60)
            raise ValueError(f"boom at step {self.t}")
        rewards = {a: float(self.possible_agents.index(a) + 1) for a in self.agents}
        terms = {a: a == "b_1" and self.t == self.leave_at for a in self.agents}
        truncs = {a: self.t >= self.length for a in self.agents}
        infos = self._infos()
        if self.t >= self.length and self.win:
            infos["a_0"]["won"] = True
        self.agents = [a for a in self.agents if not (terms[a] or truncs[a])]
        obs = self._obs()
        return obs, rewards, terms, truncs, infos


class TurnEnv(AECEnv):
    """Turn-based: ``p0, p1, p2`` act in turn; ``p1`` terminates on the global step
    ``leave_at`` and is then stepped with ``None`` once (PettingZoo's dead step); every agent
    is truncated at step ``length``. Observation ``[t, j]``; the mover gets reward 1."""

    metadata = {"name": "turns_v0"}

    def __init__(self, leave_at: int = 5, length: int = 8):
        self.possible_agents = ["p0", "p1", "p2"]
        self.leave_at, self.length = leave_at, length
        self.log: list = []

    def observation_space(self, agent):
        return spaces.Box(-np.inf, np.inf, (2,), np.float32)

    def action_space(self, agent):
        return spaces.Discrete(2)

    def observe(self, agent):
        return np.asarray([self.t, self.possible_agents.index(agent)], np.float32)

    def reset(self, seed=None, options=None):
        self.t = 0
        self.agents = list(self.possible_agents)
        self.rewards = {a: 0.0 for a in self.agents}
        self._cumulative_rewards = {a: 0.0 for a in self.agents}
        self.terminations = {a: False for a in self.agents}
        self.truncations = {a: False for a in self.agents}
        self.infos = {a: {} for a in self.agents}
        self.agent_selection = "p0"
        self._skip_agent_selection = None

    def step(self, action):
        a = self.agent_selection
        if self.terminations[a] or self.truncations[a]:
            self.log.append((a, action))
            self._was_dead_step(action)
            return
        self.t += 1
        self.log.append((a, action))
        self._cumulative_rewards[a] = 0.0
        self.rewards = {b: 0.0 for b in self.agents}
        self.rewards[a] = 1.0
        if a == "p1" and self.t >= self.leave_at:
            self.terminations["p1"] = True
        if self.t >= self.length:
            self.truncations = {b: True for b in self.agents}
        i = self.agents.index(a)
        self.agent_selection = self.agents[(i + 1) % len(self.agents)]
        self._accumulate_rewards()
        self._deads_step_first()
