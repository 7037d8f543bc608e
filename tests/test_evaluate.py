"""`jaxgan eval` and periodic evaluation: the metrics that apply to each kind of data, written
where the run keeps them."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan import configs, evaluate, loop, rundir
from jaxgan.data import labeled, toy

RING = toy.TOY["ring8"]


def jaxgan(*args, timeout=900):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, "-m", "jaxgan", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def _at_modes(k, n, rng):
    """n points from the first k ring modes (each the real component's Gaussian), equally many each."""
    which = np.arange(n) % k
    return (RING.centers[which] + RING.std * rng.normal(size=(n, 2))).astype(np.float32)


@pytest.fixture(scope="module")
def ring_evaluator(tmp_path_factory):
    config = configs.ring8()
    return evaluate.build(config, str(tmp_path_factory.mktemp("ring")), n=800, echo=lambda m: None)


@pytest.mark.parametrize("k", [1, 3, 8])
def test_toy_samples_at_k_modes_report_k(ring_evaluator, k):
    out = ring_evaluator(_at_modes(k, 800, np.random.default_rng(k)))
    assert out["modes"] == k and out["num_modes"] == 8
    assert out["high_quality"] > 0.97  # a 2-D Gaussian puts 98.9% within 3 std
    np.testing.assert_allclose(out["mode_kl"], np.log(8 / k), atol=0.02)
    # every sample sits on a real mode: precision 1; the real data's other modes are missed
    assert out["precision_data"] > 0.95
    assert out["recall_data"] == pytest.approx(k / 8, abs=0.08)
    assert out["coverage_data"] == pytest.approx(k / 8, abs=0.08)


def test_toy_real_data_scores_as_real(ring_evaluator):
    real = np.asarray(jax.jit(RING.sample, static_argnums=1)(jax.random.key(123), 800))
    out = ring_evaluator(real)
    assert out["modes"] == 8 and out["high_quality"] > 0.98 and out["mode_kl"] < 0.02
    assert out["precision_data"] > 0.9 and out["recall_data"] > 0.9 and out["coverage_data"] > 0.9
    assert abs(out["kid_data"]) < 3 * out["kid_std_data"] + 1e-6
    far = ring_evaluator(real + np.float32(1.0))
    assert far["fd_data"] > 100 * max(out["fd_data"], 1e-6) and far["precision_data"] < 0.1


def test_any_feature_function_plugs_in(tmp_path):
    """A user's feature function gives its own metrics, equal to the metric functions applied to
    its features directly."""
    from jaxgan.metrics import fid

    proj = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5)), jnp.float32)
    fn = lambda x: jnp.tanh(x @ proj)
    ev = evaluate.build(configs.ring8(), str(tmp_path), n=400, echo=lambda m: None, features={"proj": fn})
    fake = _at_modes(3, 400, np.random.default_rng(9))
    out = ev(fake)
    want = fid.fid(jnp.asarray(ev.real_features["proj"]), fn(jnp.asarray(fake)))
    np.testing.assert_allclose(out["fid_proj"], float(want), rtol=1e-3)  # float32, jit vs eager
    assert {"kid_proj", "precision_proj", "recall_proj", "density_proj", "coverage_proj"} <= set(out)
    np.testing.assert_allclose(ev.real_features["proj"], np.asarray(fn(jnp.asarray(ev.real_features["data"]))),
                               rtol=1e-5, atol=1e-6)


def test_nonfinite_samples_are_reported_not_scored(ring_evaluator):
    bad = _at_modes(8, 800, np.random.default_rng(0))
    bad[3, 0] = np.nan
    assert ring_evaluator(bad)["nonfinite_samples"] == 1


def test_sampling_uses_the_ema_generator_when_the_run_keeps_one():
    config = dataclasses.replace(configs.ring8(), ema_decay=0.5, batch_size=16, latent_dim=8, g_hidden=(8,),
                                 d_hidden=(8,))
    run = loop.Run.from_config(config)
    state = run.init_state()
    state = state.replace(ema_params=jax.tree.map(lambda p: 2.0 * p + 0.1, state.g.params))
    key = jax.random.key(5)
    got = evaluate.sample(run, state, 30, key, batch_size=10)
    ema = np.concatenate([np.asarray(run.gan.sample(state, jax.random.fold_in(key, b), 10)) for b in range(3)])
    raw = np.concatenate([np.asarray(run.gan.sample(state, jax.random.fold_in(key, b), 10, use_ema=False))
                          for b in range(3)])
    np.testing.assert_allclose(got, ema, rtol=1e-6)
    assert not np.allclose(got, raw)


def test_periodic_evaluation_during_training_and_keep_best_by_it(tmp_path):
    """eval.every runs with the default observers, logs to eval.jsonl (not metrics.jsonl: one
    schema per file), plots, and keep_best=fd_data keeps the checkpoint with the lowest fd_data
    in <run>/best (its direction, min, known from the metric's name)."""
    from jaxgan.checkpoint import BEST_DIR, BEST_FILE

    config = configs.apply_overrides(configs.ring8(), {
        "steps": 100, "batch_size": 64, "log_every": 25, "plot_every": 100, "ckpt_every": 100, "eval.every": 25,
        "eval.samples": 300, "keep_best": "fd_data", "tensorboard": False,
        "latent_dim": 8, "g_hidden": (32,), "d_hidden": (32,)})
    out = str(tmp_path / "run")
    loop.train(config, out, progress=False, echo=lambda m: None)  # default observers
    rows = rundir.read_jsonl(os.path.join(out, evaluate.EVAL_LOG))
    assert [r["step"] for r in rows] == [25, 50, 75, 100]
    assert all(r["n"] == 300 and 0 <= r["modes"] <= 8 and "fd_data" in r for r in rows)
    assert os.path.isfile(os.path.join(out, evaluate.EVAL_PLOT))
    logged = rundir.read_jsonl(os.path.join(out, rundir.METRICS))
    assert [r["step"] for r in logged] == [25, 50, 75, 100] and not any("fd_data" in r for r in logged)
    with open(os.path.join(out, BEST_FILE), encoding="utf-8") as f:
        best = json.load(f)
    best_row = min(rows, key=lambda r: r["fd_data"])
    assert best["step"] == best_row["step"] and best["modes"] == {"fd_data": "min"}
    assert best["metrics"]["fd_data"] == pytest.approx(best_row["fd_data"])
    assert os.path.isdir(os.path.join(out, BEST_DIR, str(best_row["step"])))


def test_config_checks_eval_settings():
    with pytest.raises(configs.ConfigError, match=r"eval\.every.*multiple of log_every=100"):
        configs.apply_overrides(configs.ring8(), {"eval.every": 150})
    with pytest.raises(configs.ConfigError, match=r"eval\.samples"):
        configs.apply_overrides(configs.ring8(), {"eval.every": 100, "eval.samples": 3})
    assert evaluate.better("fid_classifier") == "min" and evaluate.better("modes") == "max"
    assert evaluate.better("mode_kl") == "min" and evaluate.better("recall_inception") == "max"
    assert evaluate.better("high_quality_frac") == "max" and evaluate.better("mode_kl_real") == "min"
    with pytest.raises(ValueError, match="no direction"):
        evaluate.better("d_loss")
    # keep-best by an evaluation metric: a stated direction must be its best end, and evaluation must be on
    with pytest.raises(configs.ConfigError, match="fid_classifier is better when smaller: write fid_classifier:min"):
        configs.apply_overrides(configs.ring8(), {"eval.every": 100, "keep_best": "fid_classifier:max"})
    with pytest.raises(configs.ConfigError, match=r"fd_data comes from periodic evaluation: set eval.every"):
        configs.apply_overrides(configs.ring8(), {"keep_best": "fd_data"})
    with pytest.raises(configs.ConfigError, match="d_loss has no known best end: write d_loss:max or d_loss:min"):
        configs.apply_overrides(configs.ring8(), {"keep_best": "d_loss"})
    configs.apply_overrides(configs.ring8(), {"keep_best": "modes_captured,high_quality_frac"})  # the probe's
    # The keys of the two keep-bests this one replaced name it.
    with pytest.raises(configs.ConfigError, match="keep_best=METRIC"):
        configs.parse_overrides(["diag_best_metric=fd_data"])


@pytest.mark.slow
def test_cli_eval_prints_one_json_object_and_appends_it(tmp_path):
    out = str(tmp_path / "ring")
    proc = jaxgan("train", "--out", out, "--quiet", "--steps", "100", "--set", "log_every=50", "plot_every=100",
                  "ckpt_every=100", "batch_size=128")
    assert proc.returncode == 0, proc.stderr
    proc = jaxgan("eval", "--run", out, "--n", "400")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["step"] == 100 and result["n"] == 400 and result["num_modes"] == 8
    for key in ("modes", "high_quality", "mode_kl", "fd_data", "kid_data", "precision_data", "recall_data",
                "density_data", "coverage_data"):
        assert key in result, key
    rows = rundir.read_jsonl(os.path.join(out, evaluate.EVAL_LOG))
    assert rows == [result]
    bad = jaxgan("eval", "--run", str(tmp_path / "nope"))
    assert bad.returncode == 2 and "jaxgan: error:" in bad.stderr and "Traceback" not in bad.stderr
    bad = jaxgan("eval", "--run", out, "--inception", str(tmp_path / "missing.npz"))
    assert bad.returncode == 2 and "missing.npz" in bad.stderr and "Traceback" not in bad.stderr


# ----------------------------------------------------------------------------- image data


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return str(tmp_path_factory.mktemp("digits_run"))


@pytest.mark.slow
def test_labelled_images_get_classifier_metrics_and_class_histogram(digits_dir, digits_run):
    config = configs.Config(dataset="sklearn_digits", data_dir=digits_dir)
    source = type("Source", (), {"example_shape": (28, 28, 1)})()
    ev = evaluate.build(config, digits_run, n=300, classifier_steps=300, echo=lambda m: None, source=source)
    test = labeled.load("sklearn_digits", split="test", data_dir=digits_dir)
    real = ev(labeled.to_float(test.images))
    assert real["modes"] == 10 and real["mode_kl"] < 0.05 and len(real["class_histogram"]) == 10
    assert real["classifier_test_accuracy"] > 0.95
    assert real["precision_classifier"] > 0.7 and real["recall_classifier"] > 0.7
    threes = labeled.to_float(test.images[test.labels == 3])
    only3 = ev(np.concatenate([threes] * 10)[:300])
    assert only3["modes"] <= 3 and max(only3["class_histogram"]) >= 0.95 * 300
    assert only3["mode_kl"] > 1.5  # about log 10 = 2.3 for a single class
    assert only3["recall_classifier"] < real["recall_classifier"] - 0.3
    assert only3["fid_classifier"] > 5 * real["fid_classifier"]


@pytest.mark.slow
def test_cli_eval_on_stacked_digits(digits_dir, tmp_path):
    out = str(tmp_path / "stacked")
    proc = jaxgan("train", "--out", out, "--quiet", "--steps", "20", "--set", f"data_dir={digits_dir}",
                  "dataset=stacked:sklearn_digits", "image_size=16", "batch_size=32", "log_every=10",
                  "plot_every=20", "ckpt_every=20", "latent_dim=16")
    assert proc.returncode == 0, proc.stderr
    first = jaxgan("eval", "--run", out, "--n", "600", "--classifier-steps", "300")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout.strip().splitlines()[-1])
    assert result["num_modes"] == 1000 and 1 <= result["modes"] <= 600
    assert result["modes_real"] > 300 and result["classifier_test_accuracy"] > 0.95
    assert {"fid_classifier", "kid_classifier", "precision_classifier", "coverage_classifier"} <= set(result)
    assert "fitting the evaluation classifier" in first.stderr
    second = jaxgan("eval", "--run", out, "--n", "600", "--classifier-steps", "300")
    assert second.returncode == 0 and "fitting" not in second.stderr  # the cached classifier
    assert json.loads(second.stdout.strip().splitlines()[-1]) == result
    assert len(rundir.read_jsonl(os.path.join(out, evaluate.EVAL_LOG))) == 2
