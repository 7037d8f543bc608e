"""jaxgan.checkpoint: exact round trips, asynchronous saves, retention, and clear refusals."""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from jaxgan import configs, loop, rundir
from jaxgan.checkpoint import BEST_DIR, BEST_FILE, BestKeeper, Checkpointer, CheckpointError, describe_mismatch
from jaxgan.runner import train_chunk
from tests import helpers
from tests.helpers import host_leaves


def tiny_run(**overrides) -> loop.Run:
    """:func:`tests.helpers.tiny_run` with a one-layer D and an EMA of G (more kinds of leaf to save)."""
    return helpers.tiny_run(**{"d_hidden": (8,), "ema_decay": 0.9, **overrides})


@functools.lru_cache
def trained(rounds: int = 3):
    """(run, a state that has moved (params, Adam moments, EMA, counts, step), a fresh state)."""
    run = tiny_run()
    fresh = run.init_state()
    chunk = jax.jit(functools.partial(train_chunk, run.gan, run.source, local_batch=16, rounds=rounds))
    return run, chunk(jax.tree.map(lambda x: x.copy(), fresh))[0], fresh


def assert_bitwise(state, leaves: list[np.ndarray]) -> None:
    got = host_leaves(state)
    assert len(got) == len(leaves)
    for a, b in zip(got, leaves, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8))


def test_round_trip_is_exact_for_every_part_of_the_state(tmp_path):
    run, state, like = trained()
    expected = host_leaves(state)
    record = {"step": 3, "config": {"a": [1, 2]}, "data": None}
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(3, state, record)
        ckpt.wait()
        restored, got_record = ckpt.restore(like)
    assert got_record == record
    assert_bitwise(restored, expected)
    assert jax.random.key_impl(restored.rng) == jax.random.key_impl(state.rng)  # a typed key again
    assert int(restored.step) == 3 and int(restored.d.count) == 3 and restored.ema_params is not None
    # The restored state trains on exactly as the original does.
    step = jax.jit(run.gan.train_step)
    batch = np.ones((16, 2), np.float32)
    assert_bitwise(step(restored, batch)[0], host_leaves(step(state, batch)[0]))


def test_an_asynchronous_save_survives_donating_the_state_to_the_next_step(tmp_path):
    run, state, like = trained()
    state = jax.tree.map(lambda x: x.copy(), state)  # our own buffers, safe to donate
    expected = host_leaves(state)
    chunk = jax.jit(functools.partial(train_chunk, run.gan, run.source, local_batch=16, rounds=5), donate_argnums=0)
    with Checkpointer(str(tmp_path), asynchronous=True) as ckpt:
        ckpt.save(3, state, {"step": 3})
        moved, _ = chunk(state)  # overwrites donated buffers while the files are being written
        jax.block_until_ready(moved)
        ckpt.wait()
        restored, _ = ckpt.restore(like)
    assert_bitwise(restored, expected)
    assert int(moved.step) == 8


def test_keeps_the_last_k(tmp_path):
    _, state, _ = trained()
    with Checkpointer(str(tmp_path), keep=2) as ckpt:
        for step in range(1, 8):
            ckpt.save(step, state, {"step": step})
        ckpt.wait()
        assert ckpt.all_steps() == [6, 7]
    with Checkpointer(str(tmp_path), keep=2) as ckpt:  # a resumed run goes on from there
        ckpt.save(8, state, {"step": 8})
        ckpt.wait()
        assert ckpt.all_steps() == [7, 8]


def test_best_keeper_compares_in_order_each_metric_its_own_way(tmp_path):
    """Lexicographic: the second metric breaks ties of the first; each metric has its own best end;
    a missing or non-finite value is never best; the record persists for a resumed run."""
    path = str(tmp_path / "best.json")
    keeper = BestKeeper((("modes_captured", "max"), ("fid", "min")), path)
    assert keeper.offer(1, {"modes_captured": 6, "fid": 3.0})
    assert not keeper.offer(2, {"modes_captured": 5, "fid": 0.1})  # fewer modes: worse, whatever the fid
    assert keeper.offer(3, {"modes_captured": 6, "fid": 2.0})  # a tie on modes, a lower fid: better
    assert not keeper.offer(4, {"modes_captured": 8})  # a metric missing
    assert not keeper.offer(5, {"modes_captured": 8, "fid": float("nan")})
    assert keeper.best["step"] == 3
    again = BestKeeper((("modes_captured", "max"), ("fid", "min")), path)
    assert again.best == keeper.best
    assert not again.offer(6, {"modes_captured": 6, "fid": 2.5})
    with pytest.raises(ValueError, match="mode must be max or min"):
        BestKeeper((("fid", "lowest"),))


def test_a_different_model_is_refused_naming_the_leaves(tmp_path):
    _, state, _ = trained()
    with Checkpointer(str(tmp_path)) as ckpt:
        ckpt.save(3, state, {"step": 3})
        ckpt.wait()
        wider = tiny_run(g_hidden=(16, 8)).init_state()
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(wider)
        text = str(err.value)
        assert text.startswith(f"checkpoint 3 in {tmp_path} was written by a different model: ")
        assert "g.params.Dense_0.bias: checkpoint float32[8] vs this model float32[16]" in text
        assert "g.params.Dense_0.kernel: checkpoint float32[4, 8] vs this model float32[4, 16]" in text
        assert text.endswith("(and 6 more)")  # Dense_1.kernel, and Adam's mu, nu and the EMA copy of all three
        with pytest.raises(CheckpointError, match=r"ema_params\.Dense_0\.bias: in checkpoint float32\[8\], "
                                                  r"not in this model"):
            ckpt.restore(tiny_run(ema_decay=0.0).init_state())
        deeper = tiny_run(d_hidden=(8, 8)).init_state()
        with pytest.raises(CheckpointError, match=r"d\.params\.Dense_2\.kernel: missing in checkpoint "
                                                  r"\(this model has float32\[8, 1\]\)"):
            ckpt.restore(deeper)


def test_describe_mismatch_reads_shapes_dtypes_and_missing_leaves():
    a = {"params": {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)}, "n": np.zeros((), np.int32)}
    b = {"params": {"w": np.zeros((2, 4), np.float32), "c": np.zeros(1, np.float32)}, "n": np.zeros((), np.float32)}
    assert describe_mismatch(a, a) == ""
    assert describe_mismatch(a, b) == (
        "params.b: in checkpoint float32[3], not in this model; "
        "params.c: missing in checkpoint (this model has float32[1]); "
        "params.w: checkpoint float32[2, 3] vs this model float32[2, 4]; "
        "n: checkpoint int32[] vs this model float32[]"
    )


def _damage(directory: str, step: int, how: str) -> str:
    """Damage checkpoint ``step``'s largest array file; return its path."""
    files = [f for f in glob.glob(os.path.join(directory, str(step), "state", "**", "*"), recursive=True)
             if os.path.isfile(f)]
    target = max(files, key=os.path.getsize)
    with open(target, "rb") as f:
        data = bytearray(f.read())
    if how == "zeros":
        data = bytearray(len(data))
    elif how == "truncate":
        data = data[: len(data) // 2]
    else:  # one flipped bit, which decompresses fine: only the checksum catches it
        data[len(data) // 2] ^= 0x10
    with open(target, "wb") as f:
        f.write(data)
    return target


@pytest.mark.parametrize("how", ["zeros", "truncate", "bitflip"])
def test_a_damaged_checkpoint_is_refused_with_the_way_out(tmp_path, how):
    _, state, like = trained()
    directory = str(tmp_path / "ckpts")
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, state, {"step": 1})
        ckpt.save(2, state, {"step": 2})
    _damage(directory, 2, how)
    with Checkpointer(directory, read_only=True) as ckpt:
        with pytest.raises(CheckpointError) as err:
            ckpt.restore(like)
        assert str(err.value).startswith(f"checkpoint 2 in {directory} is damaged or incomplete (")
        assert str(err.value).endswith(f"delete {os.path.join(directory, '2')} to resume from step 1")
        restored, record = ckpt.restore(like, 1)  # the way out works
    assert record == {"step": 1}
    assert_bitwise(restored, host_leaves(state))


def test_a_replicated_state_is_refused(tmp_path):
    _, state, _ = trained()
    replicated = jax.tree.map(lambda x: np.stack([x, x]) if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                              else jax.random.split(x, 2), state)
    with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(ValueError, match="unreplicate"):
        ckpt.save(1, replicated, {"step": 1})


def test_unfinished_saves_are_ignored_and_cleaned_up(tmp_path):
    _, state, like = trained()
    directory = str(tmp_path)
    with Checkpointer(directory) as ckpt:
        ckpt.save(1, state, {"step": 1})
    # What a kill during the save of step 2 leaves: orbax's temporary directory, half written.
    shutil.copytree(os.path.join(directory, "1"), os.path.join(directory, "2.orbax-checkpoint-tmp"))
    os.remove(os.path.join(directory, "2.orbax-checkpoint-tmp", "record", "metadata"))
    with Checkpointer(directory, read_only=True) as ckpt:
        assert ckpt.all_steps() == [1] and ckpt.latest_step() == 1
    with Checkpointer(directory) as ckpt:  # a writable open (the next run) removes the leftover
        assert ckpt.latest_step() == 1
        _, record = ckpt.restore(like)
        assert record == {"step": 1}
    assert sorted(os.listdir(directory)) == ["1"]


def test_restore_without_checkpoints_or_with_a_missing_step_says_so(tmp_path):
    _, _, like = trained()
    with Checkpointer(str(tmp_path)) as ckpt:
        with pytest.raises(CheckpointError, match="no checkpoint in"):
            ckpt.restore(like)
        ckpt.save(4, like, {"step": 4})
        ckpt.wait()
        with pytest.raises(CheckpointError, match=r"no checkpoint 5 in .*; it holds steps \[4\]"):
            ckpt.restore(like, 5)


def test_the_loop_keeps_the_best_checkpoint_by_a_logged_metric(tmp_path):
    """keep_best=d_loss:max, keep_checkpoints=1: the run keeps its last checkpoint, and <run>/best
    holds the state of the step whose logged d_loss was highest (D's loss falls here, so that is
    an early one), read independently from metrics.jsonl."""
    out = str(tmp_path / "run")
    config = configs.apply_overrides(configs.preset("ring8"), {
        "batch_size": 16, "g_hidden": (8,), "d_hidden": (8,), "latent_dim": 4, "steps": 6, "log_every": 1,
        "ckpt_every": 1, "plot_every": 100, "keep_checkpoints": 1, "keep_best": "d_loss:max", "d_lr": 0.05,
    })
    lines: list[str] = []
    loop.train(config, out, progress=False, echo=lines.append)
    rows = [r for r in rundir.read_jsonl(os.path.join(out, rundir.METRICS)) if "d_loss" in r]
    best = max(rows, key=lambda r: r["d_loss"])["step"]
    assert best != 6
    with Checkpointer(os.path.join(out, rundir.CHECKPOINTS), read_only=True) as ckpt:
        assert ckpt.all_steps() == [6]
    with open(os.path.join(out, BEST_FILE)) as f:
        record = json.load(f)
    assert record["step"] == best
    assert record["metrics"]["d_loss"] == pytest.approx(next(r["d_loss"] for r in rows if r["step"] == best))
    run = loop.Run.from_config(config)
    with Checkpointer(os.path.join(out, BEST_DIR), read_only=True) as ckpt:
        state, saved = ckpt.restore(run.init_state())
    assert int(state.step) == best and saved["best"]["step"] == best
    assert not [line for line in lines if "warning" in line]
    # A metric that is never logged is said once, and no best checkpoint is kept.
    other = str(tmp_path / "other")
    config = dataclasses.replace(config, keep_best="made_up:min", steps=2)
    loop.train(config, other, progress=False, echo=lines.append)
    warnings = [line for line in lines if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(
        "jaxgan: warning: keep_best: made_up is not measured at step 1")
    assert not os.path.exists(os.path.join(other, BEST_DIR))
