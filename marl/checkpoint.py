"""Checkpoints of the training state, built on :mod:`orbax.checkpoint`.

A checkpoint holds, per step, one pytree (the training state: flax params, optax
optimizer states, environment states, PRNG keys, counters) and one JSON metadata dict
(config, counters, timestamps). Each step directory has three orbax items:

* ``state``: the leaves of the pytree, flattened to a dict ``{"leaf_00000": array}``;
* ``manifest``: the key path, shape, dtype and SHA-256 digest of every leaf;
* ``meta``: the user's JSON metadata.

Storing flat leaves (not orbax's own view of the tree) makes restore depend only on the
*template* the caller gives: its pytree structure (NamedTuples, flax struct dataclasses,
dicts) is rebuilt with :func:`jax.tree_util.tree_unflatten`, so custom nodes never have to
round-trip through orbax metadata. The manifest lets restore detect a template of another
structure and data that was garbled on disk (orbax reads a flipped byte without complaint
when the chunk is stored uncompressed).

Saves are synchronous and atomic: orbax writes into a temporary directory and renames it
to the step's name once everything is written, so a killed process leaves at most a
temporary directory, which is never listed as a step and is cleaned up on the next open.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from marl.errors import CheckpointError

__all__ = ["Checkpointer"]

log = logging.getLogger(__name__)

_FORMAT = 1
_ITEMS = ("state", "manifest", "meta")


def _leaf_name(i: int) -> str:
    return f"leaf_{i:05d}"


def _is_key_array(x: Any) -> bool:
    dtype = getattr(x, "dtype", None)
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _to_numpy(x: Any) -> np.ndarray:
    """One leaf as a host numpy array (typed PRNG keys as their raw key data)."""
    if _is_key_array(x):
        x = jax.random.key_data(x)
    return np.asarray(jax.device_get(x))


def _key_impl(leaf: Any) -> Any:
    """The PRNG implementation of a typed key array (or of its ShapeDtypeStruct)."""
    if isinstance(leaf, jax.Array):
        return jax.random.key_impl(leaf)
    return leaf.dtype._impl  # a ShapeDtypeStruct's key dtype


def _digest(arr: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(str(arr.dtype).encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray | jax.Array):
        return np.asarray(obj).tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def _jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types; non-finite floats become ``None``."""

    def clean(x: Any) -> Any:
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list):
            return [clean(v) for v in x]
        return x

    return clean(json.loads(json.dumps(obj, default=_json_default)))


def _template_spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, storage dtype and whether the leaf is a typed PRNG key array."""
    if _is_key_array(leaf):
        data = jax.eval_shape(jax.random.key_data, leaf)
        return tuple(data.shape), np.dtype(data.dtype), True
    if isinstance(leaf, jax.ShapeDtypeStruct | np.ndarray | jax.Array):
        return tuple(leaf.shape), np.dtype(leaf.dtype), False
    arr = jnp.asarray(leaf)  # python scalars: jax's default dtypes
    return tuple(arr.shape), np.dtype(arr.dtype), False


def _dtype_compatible(saved: np.dtype, wanted: np.dtype) -> bool:
    """Whether a saved leaf may be cast to the template's dtype (same kind of number)."""
    if saved == wanted:
        return True
    kinds = {"b": "b", "i": "int", "u": "int", "f": "f", "c": "c"}
    return kinds.get(saved.kind, saved.kind) == kinds.get(wanted.kind, wanted.kind)


class _Corrupt(Exception):
    """A checkpoint step that cannot be read (internal: restore tries an older one)."""


class Checkpointer:
    """Saves and restores the training state in ``directory``, one subdirectory per step.

    Keeps the newest ``max_to_keep`` checkpoints (``None`` keeps all). ``read_only`` opens
    another run's checkpoints (evaluation, an attack's victims) without touching them: no
    save, no pruning, and the leftovers of a save in progress are left alone (the run may
    still be training). Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self, directory: Path | str, max_to_keep: int | None = 3, *, read_only: bool = False
    ) -> None:
        if max_to_keep is not None and max_to_keep < 1:
            raise CheckpointError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.directory = Path(directory).expanduser().absolute()
        self.read_only = read_only
        self.max_to_keep = None if read_only else max_to_keep
        self._manager: ocp.CheckpointManager | None = None
        self._closed = False

    # ------------------------------------------------------------------ orbax manager
    def _mgr(self) -> ocp.CheckpointManager:
        if self._closed:
            raise CheckpointError(f"checkpointer for {self.directory} is closed")
        if self._manager is None:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=self.max_to_keep,
                enable_async_checkpointing=False,  # blocking saves: finalized on return
                create=False,
                # remove leftovers of a killed save (not in another run's directory)
                cleanup_tmp_directories=not self.read_only,
            )
            try:
                self._manager = ocp.CheckpointManager(
                    self.directory,
                    options=options,
                    item_handlers={
                        "state": ocp.StandardCheckpointHandler(),
                        "manifest": ocp.JsonCheckpointHandler(),
                        "meta": ocp.JsonCheckpointHandler(),
                    },
                )
            except Exception as e:  # any orbax failure is a checkpoint error
                raise CheckpointError(
                    f"cannot open checkpoint directory {self.directory}: {e}"
                ) from e
        return self._manager

    # ------------------------------------------------------------------------- listing
    def steps(self) -> list[int]:
        """The steps with a finalized checkpoint, oldest first."""
        if not self.directory.is_dir():
            return []
        mgr = self._mgr()
        mgr.reload()
        return sorted(int(s) for s in mgr.all_steps())

    def latest_step(self) -> int | None:
        """The newest step with a finalized checkpoint, or ``None``."""
        steps = self.steps()
        return steps[-1] if steps else None

    # ---------------------------------------------------------------------------- save
    def save(self, step: int, state: Any, meta: dict | None = None) -> Path:
        """Save ``state`` and ``meta`` at ``step``; returns the step's directory.

        Blocking and atomic. Checkpoints at ``step`` or later already in the directory (from
        a run that is being resumed from an earlier step) are replaced.
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} is opened read-only")
        step = int(step)
        if step < 0:
            raise CheckpointError(f"checkpoint step must be >= 0, got {step}")
        path_leaves, _ = jax.tree_util.tree_flatten_with_path(state)
        leaves = {}
        manifest: dict[str, Any] = {
            "format": _FORMAT,
            "paths": [],
            "shapes": [],
            "dtypes": [],
            "key_arrays": [],
            "sha256": [],
        }
        for i, (path, leaf) in enumerate(path_leaves):
            arr = _to_numpy(leaf)
            leaves[_leaf_name(i)] = arr
            manifest["paths"].append(jax.tree_util.keystr(path))
            manifest["shapes"].append(list(arr.shape))
            manifest["dtypes"].append(str(arr.dtype))
            manifest["key_arrays"].append(bool(_is_key_array(leaf)))
            manifest["sha256"].append(_digest(arr))
        meta_json = _jsonable(dict(meta or {}))

        self.directory.mkdir(parents=True, exist_ok=True)
        mgr = self._mgr()
        mgr.reload()
        stale = [s for s in mgr.all_steps() if s >= step]
        for s in sorted(stale):
            log.warning(
                "replacing checkpoint step %d in %s (saving step %d)", s, self.directory, step
            )
            self._delete_step(s)
        try:
            mgr.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(leaves),
                    manifest=ocp.args.JsonSave(manifest),
                    meta=ocp.args.JsonSave(meta_json),
                ),
                force=True,
            )
            mgr.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"cannot save checkpoint step {step} in {self.directory}: {e}"
            ) from e
        return self._step_dir(step)

    def _step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def _delete_step(self, step: int) -> None:
        mgr = self._mgr()
        try:
            mgr.delete(step)
        except Exception:  # a corrupt step orbax cannot delete: remove it
            shutil.rmtree(self._step_dir(step), ignore_errors=True)
        mgr.reload()

    # ------------------------------------------------------------------------- restore
    def restore(self, template: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, meta)`` into the structure and dtypes of ``template``.

        ``step=None`` restores the newest usable checkpoint: a corrupt one (unreadable,
        truncated, garbled or missing files) is skipped with a warning and the next older
        one is tried. An explicit ``step`` is restored or fails. Raises
        :class:`CheckpointError` when no usable checkpoint exists or the saved state does
        not match the template's structure.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint found in {self.directory}")
        if step is not None:
            if int(step) not in steps:
                raise CheckpointError(
                    f"no checkpoint for step {step} in {self.directory} (steps: {steps})"
                )
            try:
                return self._restore_step(template, int(step))
            except _Corrupt as e:
                raise CheckpointError(
                    f"checkpoint step {step} in {self.directory} is corrupt: {e}"
                ) from e
        problems = []
        for s in reversed(steps):
            try:
                result = self._restore_step(template, s)
            except _Corrupt as e:
                problems.append(f"step {s}: {e}")
                warnings.warn(
                    f"checkpoint step {s} in {self.directory} is corrupt ({e}); "
                    "trying the next older checkpoint",
                    RuntimeWarning,
                    stacklevel=2,
                )
                continue
            return result
        raise CheckpointError(
            f"no usable checkpoint in {self.directory}: every checkpoint is corrupt "
            f"({'; '.join(problems)})"
        )

    def _restore_step(self, template: Any, step: int) -> tuple[Any, dict]:
        mgr = self._mgr()
        try:
            head = mgr.restore(
                step,
                args=ocp.args.Composite(
                    manifest=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()
                ),
            )
            manifest, meta = head["manifest"], head["meta"]
            if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
                raise ValueError("missing or unknown manifest")
            paths = list(manifest["paths"])
            shapes = [tuple(s) for s in manifest["shapes"]]
            dtypes = [np.dtype(d) for d in manifest["dtypes"]]
            digests = list(manifest["sha256"])
            if not (len(paths) == len(shapes) == len(dtypes) == len(digests)):
                raise ValueError("inconsistent manifest")
        except Exception as e:
            raise _Corrupt(f"unreadable metadata: {_short(e)}") from e

        path_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
        self._check_template(step, path_leaves, paths, shapes, dtypes)

        abstract = {
            _leaf_name(i): jax.ShapeDtypeStruct(shape, dtype)
            for i, (shape, dtype) in enumerate(zip(shapes, dtypes, strict=True))
        }
        try:
            restored = mgr.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
            )["state"]
        except Exception as e:
            raise _Corrupt(f"unreadable state: {_short(e)}") from e

        out = []
        for i, (_, leaf) in enumerate(path_leaves):
            name = _leaf_name(i)
            try:
                arr = np.asarray(restored[name])
            except Exception as e:
                raise _Corrupt(f"unreadable leaf {paths[i]}: {_short(e)}") from e
            if arr.shape != shapes[i] or arr.dtype != dtypes[i] or _digest(arr) != digests[i]:
                raise _Corrupt(f"leaf {paths[i]} does not match its checksum")
            shape, dtype, is_key = _template_spec(leaf)
            if is_key:
                impl = _key_impl(leaf)
                out.append(jax.random.wrap_key_data(jnp.asarray(arr), impl=impl))
            else:
                out.append(jnp.asarray(arr.astype(dtype, copy=False)))
        return jax.tree_util.tree_unflatten(treedef, out), dict(meta or {})

    def _check_template(
        self,
        step: int,
        path_leaves: list,
        paths: list[str],
        shapes: list[tuple[int, ...]],
        dtypes: list[np.dtype],
    ) -> None:
        where = f"checkpoint step {step} in {self.directory}"
        tpaths = [jax.tree_util.keystr(p) for p, _ in path_leaves]
        if tpaths != paths:
            missing = [p for p in paths if p not in tpaths]
            extra = [p for p in tpaths if p not in paths]
            detail = []
            if missing:
                detail.append(f"saved but not in the template: {_listing(missing)}")
            if extra:
                detail.append(f"in the template but not saved: {_listing(extra)}")
            if not detail:
                detail.append("same leaves in another order")
            raise CheckpointError(
                f"{where} does not match the expected state structure "
                f"({len(paths)} saved leaves, {len(tpaths)} in the template; "
                f"{'; '.join(detail)})"
            )
        for (path, leaf), shape, dtype in zip(path_leaves, shapes, dtypes, strict=True):
            tshape, tdtype, _ = _template_spec(leaf)
            if tshape != shape:
                raise CheckpointError(
                    f"{where} does not match the expected state: leaf "
                    f"{jax.tree_util.keystr(path)} has shape {shape}, expected {tshape}"
                )
            if not _dtype_compatible(dtype, tdtype):
                raise CheckpointError(
                    f"{where} does not match the expected state: leaf "
                    f"{jax.tree_util.keystr(path)} has dtype {dtype}, expected {tdtype}"
                )

    # --------------------------------------------------------------------------- close
    def close(self) -> None:
        """Wait for pending work and release orbax's resources (idempotent)."""
        if self._manager is not None:
            try:
                self._manager.wait_until_finished()
                self._manager.close()
            finally:
                self._manager = None
        self._closed = True

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.directory)!r}, max_to_keep={self.max_to_keep})"


def _short(e: BaseException, limit: int = 200) -> str:
    text = f"{type(e).__name__}: {e}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items)} in all)" if len(items) > limit else "")
