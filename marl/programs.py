"""Serialised training programs: a relaunch of the same config skips tracing and lowering.

JAX's persistent compilation cache skips XLA's compile on a relaunch, but not the work before
it: tracing the Python of the environment, the policy and the PPO update into a jaxpr, and
lowering that to StableHLO, which for a small run is most of the start-up (about 5 of the
8.5 seconds a cached tiny MPE run spent in ``train``; ``scripts/relaunch.py``). Here each
of the run's large programs (the initial state, the training chunk, the evaluation, the
rendered episode) is exported once with ``jax.export`` and stored next to the compilation
cache; a later launch with the same key deserialises it
and calls it, so nothing is traced again and the compile is a cache hit.

The key is a hash of everything the programs are built from: the config without the keys
that do not reach them (seed, which is an argument, logging, checkpoints, resume), the
source of the ``marl`` package (its code version), and the versions of JAX, jaxlib and the
environment library, the backend and its devices. Any change gives a new key; stale files
are never read. Programs are exported with flat argument and result lists (their pytree
structures are pickled beside them), so no custom pytree type needs a serialisation rule.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import jax

__all__ = ["ProgramCache", "Program", "program_cache_dir"]

# config keys that never reach a compiled training program
_IRRELEVANT = ("seed", "experiment", "resume", "logger", "checkpoint", "distributed", "devices")
_VERSION = 1  # of this file format


def program_cache_dir() -> Path | None:
    """``$MARL_PROGRAM_CACHE`` (a directory; ``0`` turns the cache off), by default
    ``<compilation cache>/programs``; ``None`` when off or the compilation cache is off."""
    given = os.environ.get("MARL_PROGRAM_CACHE", "")
    if given == "0":
        return None
    if given:
        return Path(given)
    cache = jax.config.jax_compilation_cache_dir
    return Path(cache) / "programs" if cache else None


@lru_cache(maxsize=1)
def _code_version() -> str:
    """A hash of the source of the marl package (marl, marl.envs, marl.agents)."""
    import marl
    import marl.agents
    import marl.envs

    h = hashlib.sha256()
    for pkg in (marl, marl.envs, marl.agents):
        root = Path(pkg.__file__).parent
        for f in sorted([*root.rglob("*.py"), *root.rglob("*.json")]):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _platform() -> dict[str, Any]:
    import importlib.metadata as md

    import jaxlib

    devices = jax.devices()
    libraries = ("jaxmarl", "flax", "optax", "distrax", "chex")
    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        **{lib: md.version(lib) for lib in libraries},
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "threefry_partitionable": bool(jax.config.jax_threefry_partitionable),
        "backend": jax.default_backend(),
        "devices": [d.device_kind for d in devices],
        "x64": bool(jax.config.jax_enable_x64),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


class Program:
    """A compiled program called with pytrees, from a deserialised ``jax.export.Exported``
    with flat inputs and outputs; ``out_shape`` is its result as ``ShapeDtypeStruct``s."""

    def __init__(self, exported: Any, in_tree: Any, out_tree: Any):
        self._call = jax.jit(exported.call)
        self._in_tree, self._out_tree = in_tree, out_tree
        self.out_shape = jax.tree.unflatten(
            out_tree, [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in exported.out_avals]
        )

    def __call__(self, *args: Any) -> Any:
        leaves, tree = jax.tree.flatten(args)
        if tree != self._in_tree:
            raise TypeError(f"arguments {tree} differ from the program's {self._in_tree}")
        return jax.tree.unflatten(self._out_tree, self._call(*leaves))


class ProgramCache:
    """Exported programs of one config, in ``folder`` under a key of the config, the code
    and the platform."""

    def __init__(self, folder: Path, config: dict[str, Any]):
        self.folder = folder
        relevant = {k: v for k, v in config.items() if k not in _IRRELEVANT}
        doc = {"v": _VERSION, "config": relevant, "code": _code_version(), **_platform()}
        blob = json.dumps(doc, sort_keys=True, default=str).encode()
        self.key = hashlib.sha256(blob).hexdigest()[:24]
        self.hits: list[str] = []
        self.misses: list[str] = []

    @staticmethod
    def for_config(config: dict[str, Any]) -> ProgramCache | None:
        """The cache of a run's programs, or ``None`` when the compilation cache is off."""
        folder = program_cache_dir()
        return None if folder is None else ProgramCache(folder, config)

    def _path(self, name: str) -> Path:
        return self.folder / f"{name}-{self.key}.pkl"

    def get(self, name: str, build: Callable[[], Callable], args: tuple) -> Program | None:
        """The program ``name`` for abstract ``args`` (``ShapeDtypeStruct`` pytrees): read
        back if stored, else ``build()`` (a jitted function) exported and stored. ``None``
        when it cannot be exported (the caller then uses ``build()`` directly)."""
        path = self._path(name)
        if path.is_file():
            try:
                with path.open("rb") as f:
                    doc = pickle.load(f)
                program = Program(
                    jax.export.deserialize(doc["exported"]), doc["in_tree"], doc["out_tree"]
                )
                self.hits.append(name)
                return program
            except Exception as err:  # a file from a killed writer, an unpicklable tree
                warnings.warn(
                    f"program cache {path.name} unreadable ({err}); tracing again", stacklevel=2
                )
        self.misses.append(name)
        fn = build()
        leaves, in_tree = jax.tree.flatten(args)
        out_tree: list[Any] = []

        def flat(*flat_args):
            out = fn(*jax.tree.unflatten(in_tree, list(flat_args)))
            out_leaves, tree = jax.tree.flatten(out)
            out_tree.append(tree)
            return out_leaves

        try:
            exported = jax.export.export(jax.jit(flat))(*leaves)
            data = exported.serialize()
        except Exception as err:  # e.g. a custom call without a stable export
            warnings.warn(f"program {name} not cached: {type(err).__name__}: {err}", stacklevel=2)
            return None
        doc = {"exported": data, "in_tree": in_tree, "out_tree": out_tree[0]}
        tmp = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.folder, delete=False) as f:
                tmp = Path(f.name)
                pickle.dump(doc, f)
            os.replace(tmp, path)  # atomic: readers never see half a file
        except Exception as err:  # a full disk, a tree that does not pickle
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            warnings.warn(f"program {name} not stored: {err}", stacklevel=2)
        return Program(exported, in_tree, out_tree[0])
