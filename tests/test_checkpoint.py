"""Tests of marl.checkpoint: round trip, retention, corruption fallback, clear errors."""

from __future__ import annotations

import shutil
import time
import warnings
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from marl.checkpoint import Checkpointer
from marl.errors import CheckpointError, MarlError


@struct.dataclass
class EnvState:
    pos: jax.Array
    done: jax.Array
    t: jax.Array


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(32)(x))
        return nn.Dense(5)(x)


def make_state(seed: int = 0):
    key = jax.random.PRNGKey(seed)
    params = MLP().init(key, jnp.zeros((1, 8)))
    tx = optax.chain(optax.clip_by_global_norm(0.5), optax.adam(3e-4))
    opt_state = tx.init(params)
    # one update so that the adam moments and counters are not all zeros
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.1 * (seed + 1)), params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    env = EnvState(
        pos=jax.random.normal(key, (4, 3, 2)),
        done=jnp.array([True, False, False, True]),
        t=jnp.arange(4, dtype=jnp.int32) + seed,
    )
    return {
        "params": params,
        "opt_state": opt_state,
        "env": env,
        "key": jax.random.PRNGKey(seed + 100),
        "update": jnp.int32(seed * 10),
        "env_steps": jnp.asarray(seed * 1000, dtype=jnp.int32),
    }


def assert_tree_equal(a, b):
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        assert isinstance(y, jax.Array)
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.asarray(x).shape == np.asarray(y).shape
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# tensorstore may call back into orbax's already closed event loop after a failed read
ignore_loop_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def corrupt_step(directory: Path, step: int) -> None:
    """Truncate every data file of the step's state."""
    files = [f for f in (directory / str(step) / "state").rglob("*") if f.is_file()]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:3])


def test_round_trip_realistic_state(tmp_path):
    state = make_state(1)
    meta = {"config": {"algo": "ippo", "lr": 3e-4}, "update": 10, "time": time.time()}
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.steps() == [] and ckpt.latest_step() is None
        path = ckpt.save(10, state, meta)
        assert path == tmp_path / "ckpt" / "10" and path.is_dir()
        assert ckpt.steps() == [10] and ckpt.latest_step() == 10
        template = make_state(0)  # same structure, other values
        restored, restored_meta = ckpt.restore(template)
    assert_tree_equal(state, restored)
    assert isinstance(restored["env"], EnvState)
    assert restored["key"].dtype == jnp.uint32
    assert type(restored["opt_state"][1][0]).__name__ == "ScaleByAdamState"
    assert restored_meta == meta
    # a fresh Checkpointer (a new process) reads the same checkpoint
    restored2, _ = Checkpointer(tmp_path / "ckpt").restore(template, step=10)
    assert_tree_equal(state, restored2)


def test_abstract_template_and_nonfinite_meta(tmp_path):
    state = make_state(2)
    ckpt = Checkpointer(tmp_path)
    state["typed_key"] = jax.random.key(5)  # new-style typed PRNG keys work too
    ckpt.save(3, state, {"loss": float("nan"), "path": tmp_path, "n": np.int64(4)})
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    restored, meta = ckpt.restore(template)
    typed = restored.pop("typed_key")
    assert jax.dtypes.issubdtype(typed.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(
        jax.random.key_data(typed), jax.random.key_data(state.pop("typed_key"))
    )
    assert_tree_equal(state, restored)
    assert meta == {"loss": None, "path": str(tmp_path), "n": 4}
    ckpt.close()
    ckpt.close()  # idempotent


def test_save_is_fast(tmp_path):
    state = make_state(0)
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(0, state, {})  # warm up
    t0 = time.perf_counter()
    for step in range(1, 6):
        ckpt.save(step, state, {"step": step})
    per_save = (time.perf_counter() - t0) / 5
    ckpt.close()
    assert per_save < 1.0, per_save  # ~0.05 s on 2 CPU cores


def test_max_to_keep(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=2)
    for step in (0, 5, 10, 15):
        ckpt.save(step, make_state(step), {"step": step})
    assert ckpt.steps() == [10, 15]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["10", "15"]
    # the older kept checkpoint is still usable
    restored, meta = ckpt.restore(make_state(0), step=10)
    assert meta == {"step": 10}
    assert_tree_equal(make_state(10), restored)


def test_resaving_an_earlier_step_replaces_later_ones(tmp_path):
    ckpt = Checkpointer(tmp_path)
    for step in (1, 2, 3):
        ckpt.save(step, make_state(step), {"step": step})
    ckpt.save(2, make_state(7), {"step": 2, "again": True})
    assert ckpt.steps() == [1, 2]
    assert ckpt.restore(make_state(0))[1] == {"step": 2, "again": True}


@ignore_loop_noise
def test_corrupt_latest_falls_back_to_older(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.save(2, make_state(2), {"step": 2})
    ckpt.close()
    corrupt_step(tmp_path, 2)
    ckpt = Checkpointer(tmp_path)
    with pytest.warns(RuntimeWarning, match="step 2 .* corrupt"):
        restored, meta = ckpt.restore(make_state(0))
    assert meta == {"step": 1}
    assert_tree_equal(make_state(1), restored)
    # an explicit request for the corrupt step fails clearly
    with pytest.raises(CheckpointError, match="step 2 .* corrupt"):
        ckpt.restore(make_state(0), step=2)


@ignore_loop_noise
@pytest.mark.parametrize("damage", ["garble_data", "missing_state", "garble_meta"])
def test_other_corruptions_fall_back(tmp_path, damage):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.save(2, make_state(2), {"step": 2})
    step_dir = tmp_path / "2"
    if damage == "garble_data":
        for f in (step_dir / "state").rglob("*"):
            if f.is_file() and f.parent.name == "d":
                f.write_bytes(bytes(b ^ 0x5A for b in f.read_bytes()))
    elif damage == "missing_state":
        shutil.rmtree(step_dir / "state")
    else:
        (step_dir / "meta" / "metadata").write_text('{"step": ')
    with pytest.warns(RuntimeWarning, match="corrupt"):
        restored, meta = ckpt.restore(make_state(0))
    assert meta == {"step": 1}
    assert_tree_equal(make_state(1), restored)


@ignore_loop_noise
def test_all_corrupt_raises_naming_directory(tmp_path):
    ckpt = Checkpointer(tmp_path / "run" / "ckpt")
    ckpt.save(1, make_state(1), {})
    ckpt.save(2, make_state(2), {})
    corrupt_step(tmp_path / "run" / "ckpt", 1)
    corrupt_step(tmp_path / "run" / "ckpt", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="no usable checkpoint") as info:
            ckpt.restore(make_state(0))
    assert str(tmp_path / "run" / "ckpt") in str(info.value)
    assert isinstance(info.value, MarlError)


def test_missing_or_empty_directory_raises(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CheckpointError, match="no checkpoint found") as info:
        Checkpointer(missing).restore(make_state(0))
    assert str(missing) in str(info.value)
    assert not missing.exists()  # restoring never creates the directory
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=str(tmp_path / "empty")):
        Checkpointer(tmp_path / "empty").restore(make_state(0))
    ckpt = Checkpointer(tmp_path / "one")
    ckpt.save(4, make_state(0), {})
    with pytest.raises(CheckpointError, match="no checkpoint for step 5"):
        ckpt.restore(make_state(0), step=5)


def test_template_mismatch_raises(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(1), {})
    other = make_state(0)
    del other["env_steps"]
    with pytest.raises(CheckpointError, match="does not match") as info:
        ckpt.restore(other)
    assert str(tmp_path) in str(info.value) and "env_steps" in str(info.value)

    wrong_shape = make_state(0)
    wrong_shape["env"] = wrong_shape["env"].replace(pos=jnp.zeros((5, 3, 2)))
    with pytest.raises(CheckpointError, match="shape"):
        ckpt.restore(wrong_shape)

    wrong_dtype = make_state(0)
    wrong_dtype["update"] = jnp.float32(0)
    with pytest.raises(CheckpointError, match="dtype"):
        ckpt.restore(wrong_dtype)


def test_interrupted_save_is_invisible(tmp_path):
    ckpt = Checkpointer(tmp_path)
    ckpt.save(1, make_state(1), {"step": 1})
    ckpt.close()
    # what a process killed while saving step 2 leaves behind: orbax's temporary directory
    partial = tmp_path / "2.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / "1", partial)
    (partial / "state" / "_METADATA").write_text("{")
    ckpt = Checkpointer(tmp_path)
    assert ckpt.steps() == [1] and ckpt.latest_step() == 1
    assert ckpt.restore(make_state(0))[1] == {"step": 1}
    ckpt.save(2, make_state(2), {"step": 2})
    assert ckpt.steps() == [1, 2]
    assert not partial.exists()
