"""The main job end to end: `jaxgan train | sample | bench` in subprocesses."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# No EMA: 200 rounds are too few for a 0.999 average to leave the initial weights.
SHORT = ["--steps", "200", "--set", "log_every=50", "plot_every=100", "ckpt_every=100", "batch_size=128",
         "ema_decay=0"]


def jaxgan(*args, cwd=None, timeout=600):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "jaxgan", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env
    )


def one_error_line(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("jaxgan: error:")]
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ring8"
    proc = jaxgan("train", "--out", str(out), "--quiet", *SHORT)
    assert proc.returncode == 0, proc.stderr
    return out, proc


def test_train_writes_the_promised_files(trained):
    out, proc = trained
    for name in ("config.json", "metrics.jsonl", "events.jsonl", "scores.png", "losses.png", "summary.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.glob("samples_*.png"))[:2] == ["samples_000100.png", "samples_000200.png"]
    assert (out / "checkpoints" / "200").is_dir()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "generator_score" in r]  # not the coverage rows logged at plot steps
    assert [r["step"] for r in rows] == [50, 100, 150, 200]  # the final step is always logged
    needed = {"d_loss", "g_loss", "generator_score", "discriminator_score", "d_accuracy_real",
              "d_accuracy_fake", "d_grad_norm", "g_grad_norm"}
    assert needed <= set(rows[-1])
    assert all(0.0 <= rows[-1][k] <= 1.0 for k in ("generator_score", "discriminator_score"))
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "ring8" and config["steps"] == 200 and config["batch_size"] == 128
    assert "done: step 200" in proc.stdout


def test_rerun_with_higher_steps_resumes(trained):
    out, _ = trained
    proc = jaxgan("train", "--out", str(out), "--quiet", "--steps", "250")
    assert proc.returncode == 0, proc.stderr
    assert "resuming" in proc.stdout and "from step 200" in proc.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 250
    assert json.loads((out / "config.json").read_text())["steps"] == 250


def test_sample_writes_an_array_and_a_picture(trained, tmp_path):
    out, _ = trained
    npy = tmp_path / "s.npy"
    proc = jaxgan("sample", "--run", str(out), "-n", "300", "--out", str(npy))
    assert proc.returncode == 0, proc.stderr
    x = np.load(npy)
    assert x.shape == (300, 2) and np.all(np.isfinite(x))
    # The samples are near the ring, not at the origin where an untrained G puts them.
    assert np.median(np.linalg.norm(x, axis=1)) > 1.0
    png = tmp_path / "s.png"
    assert jaxgan("sample", "--run", str(out), "-n", "300", "--out", str(png)).returncode == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_prints_one_json_object_last():
    proc = jaxgan("bench", "--steps", "100", "--set", "log_every=50", "batch_size=64")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["compile_s"] > 0 and result["steps_per_s"] > 0 and result["steps"] == 100


def test_impossible_schedule_is_one_clear_error(tmp_path):
    proc = jaxgan("train", "--out", str(tmp_path / "r"), "--set", "d_steps=0")
    one_error_line(proc, "d_steps=0", "d_steps=1")
    assert not (tmp_path / "r").exists()  # nothing written


def test_unknown_key_lists_the_valid_ones(tmp_path):
    proc = jaxgan("train", "--out", str(tmp_path / "r"), "--set", "learning_rate=1")
    one_error_line(proc, "learning_rate", "g_lr", "unroll_steps")


def test_missing_run_directory_is_one_clear_error(tmp_path):
    proc = jaxgan("sample", "--run", str(tmp_path / "nope"), "-n", "5", "--out", str(tmp_path / "x.npy"))
    one_error_line(proc, "does not exist", "--out of a `jaxgan train` run")


@pytest.mark.parametrize(
    ("array", "fragments"),
    [
        (np.zeros((100, 2), np.int64), ("dtype int64", "floating-point")),
        (np.where(np.arange(200).reshape(100, 2) == 7, np.nan, 0.0).astype(np.float32), ("1 NaN/Inf",)),
        (np.zeros((100,), np.float32), ("shape (100,)", "[N, ...]")),
    ],
    ids=["dtype", "nan", "shape"],
)
def test_bad_data_is_one_clear_error_before_training(tmp_path, array, fragments):
    path = tmp_path / "data.npy"
    np.save(path, array)
    proc = jaxgan("train", "--out", str(tmp_path / "r"), "--set", f"dataset={path}")
    one_error_line(proc, *fragments)


def test_a_user_array_dataset_trains(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npy"
    np.save(path, rng.normal(3.0, 0.1, size=(500, 2)).astype(np.float32))
    out = tmp_path / "r"
    proc = jaxgan("train", "--out", str(out), "--quiet", "--steps", "300",
                  "--set", f"dataset={path}", "log_every=100", "batch_size=64", "g_lr=3e-3", "d_lr=3e-3")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 300


def test_train_starts_the_distributed_runtime_before_tune_asks_for_the_backend(monkeypatch):
    """jax.distributed.initialize must come before anything starts JAX's backends, and tune()
    asks for the default backend (which starts them)."""
    from jaxgan import cli, cpu, parallel

    calls = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda *a, **k: calls.append("distributed"))
    monkeypatch.setattr(cpu, "tune", lambda **k: calls.append("tune"))
    monkeypatch.setattr(cli, "cmd_train", lambda args: calls.append("train") or 0)
    monkeypatch.setattr(cli, "cmd_bench", lambda args: calls.append("bench") or 0)
    assert cli.main(["train", "--num-processes", "2"]) == 0
    assert cli.main(["bench"]) == 0
    assert calls == ["distributed", "tune", "train", "tune", "bench"]
