"""Environments: one array view over pure-JAX and PettingZoo environments.

- :func:`make` builds a registered pure-JAX environment (JaxMARL's ``MultiAgentEnv``
  protocol); :func:`make_array_env` wraps it in the array view (:class:`JaxArrayEnv`).
- :func:`pettingzoo_vector_env` steps copies of any PettingZoo environment in worker
  processes and returns the same array view as numpy arrays.
- :func:`to_pettingzoo` exports a registered pure-JAX environment as a PettingZoo
  ``ParallelEnv``.

The array layout (:class:`TimeStep`, :class:`EnvSpec`) is documented in :mod:`marl.envs.core`.
"""

from marl.envs import _quiet_jaxmarl  # noqa: F401  (first: imports jaxmarl quietly)
from marl.envs.core import EnvSpec, TimeStep
from marl.envs.export import JaxParallelEnv, to_pettingzoo
from marl.envs.jax_env import ArrayEnvState, JaxArrayEnv
from marl.envs.pettingzoo_vector import PettingZooVectorEnv, pettingzoo_vector_env
from marl.envs.registry import EnvEntry, entry, make, make_array_env, names, register

__all__ = [
    "ArrayEnvState",
    "EnvEntry",
    "EnvSpec",
    "JaxArrayEnv",
    "JaxParallelEnv",
    "PettingZooVectorEnv",
    "TimeStep",
    "entry",
    "make",
    "make_array_env",
    "names",
    "pettingzoo_vector_env",
    "register",
    "to_pettingzoo",
]
