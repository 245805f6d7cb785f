"""Shared test set-up: CPU only, and a persistent JAX compilation cache so that repeated runs
(and CI's second run on the same machine) skip most compiles."""

import os
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from marl.cli import single_thread_eigen  # noqa: E402

single_thread_eigen()  # as `marl` does: the multi-threaded pool can wedge vmapped programs

import jax  # noqa: E402

_CACHE = Path(__file__).resolve().parent.parent / ".jax_cache"
os.environ["MARL_COMPILE_CACHE"] = str(_CACHE)  # `marl train` in tests uses the same cache
jax.config.update("jax_compilation_cache_dir", str(_CACHE))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # as `marl` does
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
