"""The program cache (marl/programs.py): exported training programs compute exactly what the
traced ones do, a relaunch reads them back instead of tracing, and the key follows the
config."""

import jax
import numpy as np
import pytest
from tiny import QUIET, TINY

from marl.config import compose, to_dict
from marl.programs import ProgramCache
from marl.trainer import Trainer

SMALL = [*TINY, *QUIET]  # the tests' shared tiny config (compiled once)


def _chunk(trainer: Trainer):
    runner = trainer.init_runner()
    runner, metrics = trainer.run_chunk(runner, 2)
    return jax.device_get(runner), metrics


def test_exported_programs_match_the_traced_ones_and_are_read_back(monkeypatch):
    cfg = compose(SMALL)
    monkeypatch.setenv("MARL_PROGRAM_CACHE", "0")
    traced = Trainer(cfg, None)
    assert traced.programs is None
    expected = _chunk(traced)
    monkeypatch.delenv("MARL_PROGRAM_CACHE")
    first = Trainer(cfg, None)  # exports the programs (or reads them from an earlier run)
    got = _chunk(first)
    again = Trainer(cfg, None)  # a relaunch: every program read back, nothing traced
    assert again.programs.key == first.programs.key
    got_again = _chunk(again)
    assert again.programs.hits == ["init", "chunk"] and not again.programs.misses
    for out in (got, got_again):
        for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(out), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_the_key_follows_what_reaches_the_programs():
    def key(*extra):
        return ProgramCache.for_config(to_dict(compose([*SMALL, *extra]))).key

    base = key()
    assert key("seed=7") == base  # an argument of the programs, not part of them
    assert key("logger.root=/elsewhere", "checkpoint.max_to_keep=9") == base
    assert key("algo.lr=0.01") != base
    assert key("num_envs=8") != base
    assert key("env=mpe/simple_reference") != base


def test_an_unreadable_program_file_is_traced_again(tmp_path, monkeypatch):
    monkeypatch.setenv("MARL_PROGRAM_CACHE", str(tmp_path))
    cfg = compose(SMALL)
    trainer = Trainer(cfg, None)
    assert trainer.programs.misses == ["init"]
    path = tmp_path / f"init-{trainer.programs.key}.pkl"
    assert path.is_file()
    path.write_bytes(b"not a pickle")
    with pytest.warns(UserWarning, match="unreadable"):
        again = Trainer(cfg, None)
    assert again.programs.misses == ["init"]  # traced and stored again
    runner = again.init_runner()
    assert jax.tree.leaves(runner)[0].shape[0] == 1  # one seed
