"""Bad input, tried on purpose: each gives one clear ``jaxgan: error:`` line, exit status 2,
no traceback and no partial output (a new run directory is not created; a used one is left as
it was). Most cases call ``jaxgan.cli.main`` in this process (fast); two run the real
``python -m jaxgan`` to show the whole path prints no traceback."""

from __future__ import annotations

import glob
import json
import os
import warnings

import numpy as np
import pytest

from jaxgan import build, cli, configs, loop, rundir
from jaxgan.data import DataWarning, check_image_layout, check_range
from tests.cli_helpers import error_lines, jaxgan


def fails(capsys, *argv: str) -> str:
    """Run the CLI; assert it refused with exactly one error line; return that line."""
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    lines = error_lines(captured.err)
    assert code == 2, captured.out + captured.err
    assert len(lines) == 1 and lines[0].startswith("jaxgan: error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0][len("jaxgan: error: "):]


def snapshot(directory: str) -> dict[str, bytes]:
    files = sorted(f for f in glob.glob(os.path.join(directory, "**", "*"), recursive=True) if os.path.isfile(f))
    out = {}
    for name in files:
        with open(name, "rb") as f:
            out[name] = f.read()
    return out


def npy(tmp_path, name: str, array) -> str:
    path = str(tmp_path / name)
    np.save(path, array)
    return path


# ------------------------------------------------------------------------------------ data


def test_data_shape(tmp_path, capsys):
    path = npy(tmp_path, "flat.npy", np.zeros(100, np.float32))
    out = str(tmp_path / "run")
    assert fails(capsys, "train", "--out", out, "--set", f"dataset={path}") == (
        f"dataset {path!r} has shape (100,): it needs [N, ...] with N >= 2 examples"
    )
    assert not os.path.exists(out)


def test_data_dtype(tmp_path, capsys):
    path = npy(tmp_path, "ints.npy", np.arange(200).reshape(100, 2))
    out = str(tmp_path / "run")
    message = fails(capsys, "train", "--out", out, "--set", f"dataset={path}")
    assert message.startswith(f"dataset {path!r} has dtype int64, but the GAN needs floating-point data")
    assert not os.path.exists(out)


def test_channels_first_images(tmp_path, capsys):
    path = npy(tmp_path, "nchw.npy", np.zeros((10, 3, 8, 8), np.float32))
    out = str(tmp_path / "run")
    assert fails(capsys, "train", "--out", out, "--set", f"dataset={path}") == (
        f"dataset {path!r} has examples of shape (3, 8, 8), which looks channels-first [C, H, W]: "
        "jaxgan takes [N, H, W, C]; transpose with np.transpose(x, (0, 2, 3, 1))"
    )
    assert not os.path.exists(out)


def test_channel_count():
    with pytest.raises(Exception, match=r"with 5 channels: images need \[H, W, C\] with C in \(1, 3, 4\)"):
        check_image_layout((8, 8, 5), what="data")
    check_image_layout((8, 8, 3))  # RGB is fine
    check_image_layout((2,))  # vectors have no channels
    with pytest.raises(Exception, match=r"with 3 channels: images need \[H, W, C\] with C in \(1,\)"):
        check_image_layout((8, 8, 3), channels=(1,))  # a pipeline that wants grey can say so


def test_nan_in_data(tmp_path, capsys):
    data = np.zeros((100, 2), np.float32)
    data[7, 1] = np.inf
    data[9, 0] = np.nan
    path = npy(tmp_path, "nan.npy", data)
    assert fails(capsys, "train", "--out", str(tmp_path / "run"), "--set", f"dataset={path}") == (
        f"dataset {path!r} contains 2 NaN/Inf value(s): clean or drop those examples before training"
    )
    assert not os.path.exists(tmp_path / "run")


@pytest.mark.parametrize("kind", ["no rows", "one row", "empty file", "not numpy", "missing"])
def test_empty_or_unreadable_dataset(tmp_path, capsys, kind):
    path = str(tmp_path / "data.npy")
    if kind == "no rows":
        np.save(path, np.zeros((0, 2), np.float32))
        expected = f"dataset {path!r} has shape (0, 2): it needs [N, ...] with N >= 2 examples"
    elif kind == "one row":
        np.save(path, np.zeros((1, 2), np.float32))
        expected = f"dataset {path!r} has shape (1, 2): it needs [N, ...] with N >= 2 examples"
    elif kind == "empty file":
        open(path, "wb").close()
        expected = f"{path!r} is not a .npy file (no .npy header; it is empty): save the array [N, ...] with np.save"
    elif kind == "not numpy":
        with open(path, "w") as f:
            f.write("x,y\n1,2\n")
        expected = f"{path!r} is not a .npy file (no .npy header): save the array [N, ...] with np.save"
    else:
        expected = f"dataset file {path!r} does not exist: pass an existing .npy file"
    message = fails(capsys, "train", "--out", str(tmp_path / "run"), "--set", f"dataset={path}")
    assert message.startswith(expected)
    assert not os.path.exists(tmp_path / "run")


def test_range_warning_is_for_images_only(tmp_path):
    """Image-shaped data outside [-1, 1] warns (with the usual rescaling); vector data such as
    the toy mixtures (radius 2, grid to +-4) has no expected range and does not."""
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 4, 4, 1)).astype(np.float32)
    with pytest.warns(DataWarning, match=r"has values in \[0, 255\], outside the \[-1, 1\] a tanh generator "
                                         r"produces; rescale it, e.g. with x / 127.5 - 1"):
        check_range(pixels, what="images")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check_range(pixels / 127.5 - 1.0) is None
        assert check_range(np.full((20, 2), 4.0)) is None  # toy 2-D data: no warning
        build.load_array(npy(tmp_path, "far.npy", np.full((20, 2), 40.0, np.float32)))


@pytest.mark.filterwarnings("default::jaxgan.data.checks.DataWarning")  # shown, as outside pytest
def test_range_warning_prints_one_line_and_training_goes_on(tmp_path, capsys):
    pixels = np.random.default_rng(0).integers(0, 256, size=(20, 2, 2, 1)).astype(np.float32)
    path = npy(tmp_path, "pixels.npy", pixels)
    code = cli.main(["train", "--out", str(tmp_path / "run"), "--steps", "1", "--quiet", "--set",
                     f"dataset={path}", "batch_size=4", "g_hidden=4", "d_hidden=4", "latent_dim=2",
                     "plot_every=100"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lo, hi = pixels.min(), pixels.max()
    assert error_lines(captured.err) == [
        f"jaxgan: warning: dataset {path!r} has values in [{lo:.4g}, {hi:.4g}], outside the [-1, 1] a tanh "
        "generator produces; rescale it, e.g. with x / 127.5 - 1"
    ]


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(("argv", "expected"), [
    (["--preset", "nope"], "unknown preset 'nope'; choose one of ['dcgan-cifar10', 'dcgan-mnist', 'dcgan32', "
     "'dcgan64', 'gaussian1d', 'grid25', 'metz-grid25', 'metz-ring8', 'pacgan-grid25', 'pacgan-ring8', 'ring8']"),
    (["--set", "nope=1"], "unknown config key 'nope'; valid keys: "),
    (["--set", "batch_size"], "--set expects key=value, got 'batch_size' (e.g. --set loss=hinge)"),
    (["--set", "batch_size=abc"], "config key 'batch_size' needs a value of type int, got 'abc'"),
    (["--set", "batch_size=6.5"], "config key 'batch_size' needs a value of type int, got '6.5'"),
    (["--set", "g_lr=fast"], "config key 'g_lr' needs a value of type float, got 'fast'"),
    (["--set", "unroll_first_order=maybe"], "config key 'unroll_first_order' needs a value of type bool"),
    (["--set", "g_lr=-0.001"], "g_lr=-0.001: a learning rate must be >= 0"),
    (["--set", "d_lr=inf"], "d_lr=inf: must be a finite number"),
    (["--set", "d_lr=nan"], "d_lr=nan: must be a finite number"),
    (["--set", "unroll_steps=-1"], "unroll_steps=-1: the lookahead depth must be >= 0 (0: plain GAN)"),
    (["--set", "devices=3", "batch_size=64"],
     "batch_size=64: the global batch must split evenly over devices=3; use a multiple of 3"),
    (["--set", "loss=wgan"], "loss='wgan': unknown loss; choose one of minimax, non_saturating, wasserstein, "
                             "hinge, least_squares"),
    (["--set", "nan_policy=ignore"], "nan_policy='ignore': choose stop or skip"),
    (["--set", "keep_best=d_loss:median"], "keep_best='d_loss:median': d_loss:median: the direction after ':' is"),
    (["--set", "keep_best_mode=min"], "keep_best_mode is gone: one keep-best now serves both uses; set keep_best="),
    (["--set", "diag.window=0"], "diag.window=0: must be >= 1"),
    (["--set", "diag_quality_min=0.1"], "diag_quality_min is gone: the toy collapse rule reads where every sample"),
    (["--set", "diag.fit_progress=1.5"], "diag.fit_progress=1.5: is a fraction"),
    (["--set", "diag.nope=1"], "unknown config key 'diag.nope'"),
    (["--steps", "0"], "steps=0: must be >= 1"),
])
def test_bad_config(tmp_path, capsys, argv, expected):
    out = str(tmp_path / "run")
    assert fails(capsys, "train", "--out", out, *argv).startswith(expected)
    assert not os.path.exists(out)


# ------------------------------------------------------------------------------------ run directories


def test_run_directory_that_is_a_file(tmp_path, capsys):
    path = tmp_path / "taken"
    path.write_text("hello")
    assert fails(capsys, "train", "--out", str(path)) == (
        f"--out {str(path)!r} is a file, not a directory: choose another --out"
    )
    assert path.read_text() == "hello"


def test_output_under_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("hello")
    out = str(tmp_path / "taken" / "run")
    assert fails(capsys, "train", "--out", out).startswith(f"cannot create run directory {out!r}: ")


def test_unwritable_output_directory_even_for_root(tmp_path, capsys):
    """/proc takes no new files whoever asks, root included (permission bits would not stop root)."""
    out = "/proc/jaxgan-test/run"
    assert fails(capsys, "train", "--out", out) == (
        f"cannot create run directory {out!r}: '/proc' does not take new files (No such file or directory); "
        "choose another --out"
    )
    assert not os.path.exists("/proc/jaxgan-test")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root writes through permission bits; the /proc case covers root")
def test_read_only_directory(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert fails(capsys, "train", "--out", str(locked)).startswith(
            f"run directory {str(locked)!r} is not writable (Permission denied)")
        out = str(locked / "run")
        assert fails(capsys, "train", "--out", out).startswith(f"cannot create run directory {out!r}")
    finally:
        locked.chmod(0o700)


def test_non_empty_directory_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert fails(capsys, "train", "--out", str(tmp_path)) == (
        f"{str(tmp_path)!r} is not empty and is not a jaxgan run (notes.txt): choose a new or empty --out"
    )
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.fixture(scope="module")
def used_run(tmp_path_factory) -> str:
    """A finished 4-step run with checkpoints at steps 2 and 4 (trained in this process)."""
    out = str(tmp_path_factory.mktemp("used") / "run")
    config = configs.apply_overrides(configs.preset("ring8"), {
        "batch_size": 8, "g_hidden": (4,), "d_hidden": (4,), "latent_dim": 2, "steps": 4, "log_every": 2,
        "ckpt_every": 2, "plot_every": 100,
    })
    loop.train(config, out, progress=False, echo=lambda _: None)
    return out


@pytest.fixture
def run_copy(used_run, tmp_path) -> str:
    import shutil

    out = str(tmp_path / "run")
    shutil.copytree(used_run, out)
    return out


def test_a_different_config_in_a_used_directory_is_refused_with_the_way_out(run_copy, capsys):
    before = snapshot(run_copy)
    message = fails(capsys, "train", "--out", run_copy, "--preset", "grid25", "--steps", "8")
    assert message.startswith(f"{run_copy!r} holds a run with a different config (preset: saved 'ring8', "
                              "now 'grid25'; dataset: saved 'ring8', now 'grid25'; ")
    assert message.endswith(f"resume it with `jaxgan train --out {run_copy}` (its saved config; --steps N "
                            "raises the target), or choose another --out for the new config")
    message = fails(capsys, "train", "--out", run_copy, "--set", "g_lr=0.5")
    assert "g_lr: saved 0.001, now 0.5" in message
    assert snapshot(run_copy) == before


def test_resuming_prints_what_it_resumes_and_steps_may_be_raised(run_copy, capsys):
    assert cli.main(["train", "--out", run_copy, "--steps", "6", "--quiet", "--set", "ckpt_every=3"]) == 0
    out = capsys.readouterr().out
    assert f"jaxgan: resuming {run_copy} (ring8) from step 4 (its latest checkpoint), training to step 6" in out
    assert rundir.load_config(run_copy).steps == 6 and rundir.load_config(run_copy).ckpt_every == 3
    rows = rundir.read_jsonl(os.path.join(run_copy, rundir.METRICS))
    assert [r["step"] for r in rows if "d_loss" in r] == [2, 4, 6]
    assert cli.main(["train", "--out", run_copy, "--steps", "5", "--quiet"]) == 0
    assert "is already at step 6 >= --steps 5; raise --steps to train on" in capsys.readouterr().out


def test_a_config_json_edited_after_the_checkpoints_is_refused_naming_keys_and_leaves(run_copy, capsys):
    path = os.path.join(run_copy, rundir.CONFIG)
    with open(path) as f:
        saved = json.load(f)
    saved["g_hidden"] = [6]  # someone widens the generator by hand
    with open(path, "w") as f:
        json.dump(saved, f)
    before = snapshot(run_copy)
    message = fails(capsys, "train", "--out", run_copy, "--steps", "8")
    ckpts = os.path.join(run_copy, "checkpoints")
    assert message.startswith(f"checkpoint 4 in {ckpts} was written with another config than {path} "
                              "(g_hidden: saved (4,), now (6,)); its model differs: g.params.Dense_0.bias: "
                              "checkpoint float32[4] vs this model float32[6]; ")
    assert "g.params.Dense_0.kernel: checkpoint float32[2, 4] vs this model float32[2, 6]" in message
    assert message.endswith("The config file was edited after the run started: put those values back, or "
                             "start a new run with another --out")
    assert snapshot(run_copy) == before


def test_corrupt_checkpoint_file(run_copy, capsys):
    files = glob.glob(os.path.join(run_copy, "checkpoints", "4", "state", "**", "*"), recursive=True)
    biggest = max((f for f in files if os.path.isfile(f)), key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.write(b"\0" * 64)
    before = snapshot(run_copy)
    message = fails(capsys, "train", "--out", run_copy, "--steps", "8")
    ckpts = os.path.join(run_copy, "checkpoints")
    assert message.startswith(f"checkpoint 4 in {ckpts} is damaged or incomplete (")
    assert message.endswith(f"delete {os.path.join(ckpts, '4')} to resume from step 2")
    assert snapshot(run_copy) == before


def test_unreadable_config_json(run_copy, capsys):
    with open(os.path.join(run_copy, rundir.CONFIG), "w") as f:
        f.write("{not json")
    message = fails(capsys, "train", "--out", run_copy)
    assert message.startswith(f"{os.path.join(run_copy, rundir.CONFIG)} is unreadable (")
    assert message.endswith("restore it, or choose another --out")
    with open(os.path.join(run_copy, rundir.CONFIG), "w") as f:
        json.dump({"preset": "ring8", "wings": 2}, f)
    assert "unknown config key(s) ['wings']" in fails(capsys, "train", "--out", run_copy)


def test_sample_from_a_damaged_or_foreign_directory(tmp_path, capsys):
    assert fails(capsys, "sample", "--run", str(tmp_path), "--out", str(tmp_path / "s.npy")) == (
        f"{str(tmp_path)!r} is not a jaxgan run (no config.json): pass the --out of a `jaxgan train` run"
    )


# ------------------------------------------------------------------------------------ whole process


@pytest.mark.parametrize(("argv", "expected"), [
    (["--set", "unroll_steps=-2"], "jaxgan: error: unroll_steps=-2: the lookahead depth must be >= 0 (0: plain GAN)"),
    (["--set", "dataset=/nonexistent/x.npy"],
     "jaxgan: error: dataset file '/nonexistent/x.npy' does not exist: pass an existing .npy file"),
])
def test_the_real_command_prints_one_line_and_no_traceback(tmp_path, argv, expected):
    out = str(tmp_path / "run")
    result = jaxgan("train", "--out", out, *argv)
    assert result.returncode == 2
    assert error_lines(result.stderr) == [expected]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not os.path.exists(out)
