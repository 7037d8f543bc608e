"""The failure-mode detectors on synthetic metric streams, the policies, remedies, coverage,
the report and the TensorBoard writer, each against an independent computation."""

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from jaxgan import configs, diagnose, losses, report, rundir, scores, viz
from jaxgan.diagnose import Policy, Thresholds
from jaxgan.metrics import coverage

TH = Thresholds()  # defaults: warmup 500 (samples), 100 (scores); window 200; long window 1000
HEALTHY = {"generator_score": 0.5, "discriminator_score": 0.5, "d_accuracy_real": 0.5, "d_accuracy_fake": 0.5,
           "diversity": 1.0, "g_grad_norm": 0.1, "d_grad_norm": 0.1, "g_signal": 0.5, "d_nonfinite": 0.0,
           "g_nonfinite": 0.0}
SW = TH.score_warmup


def stream(n_rows, every=100, **series):
    """Rows at steps every, 2*every, ...; each series is a constant or a function of the step."""
    rows = []
    for i in range(1, n_rows + 1):
        t = i * every
        row = {"step": t}
        for key, value in {**HEALTHY, **series}.items():
            row[key] = value(t) if callable(value) else value
        rows.append(row)
    return rows


def window_means(rows, key, window, warmup):
    """Independent reference for equally spaced rows: {t: mean of the rows in (t - window, t]}
    for every t the stream covers after warmup."""
    steps = np.array([r["step"] for r in rows])
    values = np.array([r[key] for r in rows], float)
    return {int(t): float(values[(steps > t - window) & (steps <= t)].mean())
            for t in steps if t - window >= warmup}


def kinds(events):
    return [e["kind"] for e in events]


def run(rows, th=TH, policy=None, **kw):
    return diagnose.replay(rows, th, policy or Policy(), **kw)


def after(t0, value, before=0.5):
    return lambda t: value if t > t0 else before


# ----------------------------------------------------------------------------- windows


def test_window_mean_weights_rows_by_the_rounds_they_cover():
    h = diagnose.History()
    steps = [100, 150, 400, 500, 900]  # uneven chunks (a resumed run, or boundaries mid-log)
    values = [1.0, 2.0, 3.0, 4.0, 5.0]
    for s, v in zip(steps, values, strict=True):
        h.add(s, {"x": v})
    w = h.window("x", 900, 750, warmup=0)  # (150, 900]: rows 400, 500, 900 covering 250, 100, 400 rounds
    assert w.start == 150 and list(w.steps) == [400, 500, 900]
    assert w.mean == pytest.approx(np.average([3.0, 4.0, 5.0], weights=[250, 100, 400]))
    assert h.window("x", 900, 850, warmup=0).start == 0  # from the origin
    assert h.window("x", 900, 950, warmup=0) is None  # longer than the stream
    assert h.window("x", 500, 100, warmup=450) is None  # (400, 500] starts before the warm-up ends
    assert h.window("x", 900, 400, warmup=450).start == 500


# ----------------------------------------------------------------------------- detectors


def test_discriminator_dominates_fires_once_at_onset_with_the_window_means():
    rows = stream(40, generator_score=after(1500, 0.03), discriminator_score=after(1500, 0.96),
                  d_accuracy_fake=after(1500, 0.99))
    diag = run(rows)
    onsets = [e for e in diag.events if e["kind"] == "discriminator_dominates"]
    assert len(onsets) == 1
    g = window_means(rows, "generator_score", TH.window, SW)
    d = window_means(rows, "discriminator_score", TH.window, SW)
    expected = min(t for t in g if g[t] <= TH.g_low and d[t] >= TH.d_high)
    ev = onsets[0]
    assert ev["step"] == expected == 1700  # 200 rounds after the onset: the window holds no healthy row
    assert ev["evidence"]["generator_score"] == pytest.approx(g[expected], rel=1e-3)
    assert ev["evidence"]["discriminator_score"] == pytest.approx(d[expected], rel=1e-3)
    assert ev["evidence"]["window"] == [expected - TH.window, expected]
    assert any("label flipping" in r for r in ev["remedies"]) and any("dropout" in r for r in ev["remedies"])
    assert "generator_dominates" not in kinds(diag.events)
    assert diag.active == {"discriminator_dominates": 1700}


def test_discriminator_dominates_not_on_a_short_dip_nor_on_a_healthy_stream():
    dip = stream(40, generator_score=lambda t: 0.03 if 2000 < t <= 2100 else 0.5,
                 discriminator_score=lambda t: 0.96 if 2000 < t <= 2100 else 0.5)
    assert "discriminator_dominates" not in kinds(run(dip).events)
    rng = np.random.default_rng(0)
    noisy = stream(60, generator_score=lambda t: 0.5 + 0.03 * rng.normal(),
                   discriminator_score=lambda t: 0.5 + 0.03 * rng.normal())
    assert run(noisy).events == []


def test_recovery_is_reported_once_and_hysteresis_stops_flapping():
    rows = stream(60, generator_score=lambda t: 0.03 if 1000 < t <= 3000 else 0.5,
                  discriminator_score=lambda t: 0.96 if 1000 < t <= 3000 else 0.5)
    events = run(rows).events
    # Back at 0.5 with accuracy 0.5 after D had its edge: that is also the converged signal.
    assert kinds(events) == ["discriminator_dominates", "recovered", "converged"]
    rec = events[1]
    assert rec["evidence"]["failure"] == "discriminator_dominates"
    assert rec["evidence"]["steps_active"] == rec["step"] - events[0]["step"]
    # A generator score wandering across the threshold (0.09 / 0.12) is one failure, not many.
    flap = stream(80, generator_score=lambda t: 0.03 if t <= 2000 else (0.09 if (t // 500) % 2 else 0.12),
                  discriminator_score=0.95)
    assert kinds(run(flap).events) == ["discriminator_dominates"]


def test_generator_dominates():
    rows = stream(30, generator_score=after(1000, 0.8), discriminator_score=after(1000, 0.35),
                  d_accuracy_fake=after(1000, 0.0))
    events = run(rows).events
    (ev,) = [e for e in events if e["kind"] == "generator_dominates"]
    g = window_means(rows, "generator_score", TH.window, SW)
    assert ev["step"] == min(t for t in g if g[t] >= TH.g_high) == 1200
    assert ev["evidence"]["generator_score"] == pytest.approx(g[ev["step"]], rel=1e-3)
    assert ev["evidence"]["d_accuracy_fake"] == pytest.approx(
        window_means(rows, "d_accuracy_fake", TH.window, SW)[ev["step"]], abs=1e-4)
    assert any("more filters (units) in the discriminator" in r for r in ev["remedies"])
    assert run(stream(30, generator_score=after(1000, 0.65))).events == []


def test_mode_collapse_from_diversity():
    rows = stream(30, diversity=after(1000, 0.2, before=1.0))
    (ev,) = run(rows).events
    assert ev["kind"] == "mode_collapse"
    div = window_means(rows, "diversity", TH.window, TH.warmup)
    assert ev["step"] == min(t for t in div if div[t] <= TH.diversity_min)
    assert ev["evidence"]["diversity"] == pytest.approx(div[ev["step"]], rel=1e-3)
    assert ev["remedies"][0].startswith("packing") and "pack=2" in ev["remedies"][0]
    assert any("larger latent" in r for r in ev["remedies"]) and any("unrolled" in r for r in ev["remedies"])
    assert run(stream(30, diversity=0.7)).events == []


def coverage_rows(spread, quality=0.6, every=500, n=8):
    """A healthy stream with coverage snapshots every ``every`` steps."""
    rows = []
    for r in stream(n * every // 100):
        rows.append(r)
        if r["step"] % every == 0:
            rows.append({"step": r["step"], "modes_spread": spread(r["step"]), "high_quality_frac": quality,
                         "median_distance": 2.0})
    return rows


def test_mode_collapse_from_where_the_toy_samples_fall():
    rows = coverage_rows(lambda t: 8.0 if t <= 1500 else 2.0)
    (ev,) = run(rows, num_modes=8).events
    assert ev["kind"] == "mode_collapse" and ev["step"] == 2000  # the first collapsed snapshot
    assert ev["evidence"]["modes_spread"] == 2.0 and ev["evidence"]["modes_total"] == 8
    # On the modes or off them: a blob in two modes' territories is collapse either way.
    assert kinds(run(coverage_rows(lambda t: 2.0 if t > 1500 else 8.0, quality=0.01), num_modes=8).events) \
        == ["mode_collapse"]
    # Six of eight modes is not collapse (threshold: half the modes).
    assert run(coverage_rows(lambda t: 6.0), num_modes=8).events == []
    # Snapshots before the warm-up ends are not judged.
    assert run(coverage_rows(lambda t: 2.0 if t <= 500 else 8.0), num_modes=8).events == []


def test_vanishing_gradients_needs_a_confident_discriminator():
    """G's signal (the slope of its loss at D's verdict) falls to a twentieth of its peak while D
    is confident: vanishing gradients, the cause, with D's dominance as a symptom."""
    signal = lambda t: 0.5 if t <= 1500 else 0.01
    rows = stream(40, g_signal=signal, discriminator_score=after(1500, 0.99, before=0.7),
                  generator_score=after(1500, 0.01, before=0.4), diversity=after(1500, 0.3, before=1.0))
    events = [e for e in run(rows).events if e["kind"] != "recovered"]
    assert kinds(events) == ["vanishing_gradients"]
    (ev,) = events
    sig = window_means(rows, "g_signal", TH.window, SW)
    t = ev["step"]
    assert ev["evidence"]["g_signal_peak"] == 0.5
    assert ev["evidence"]["ratio"] == pytest.approx(sig[t] / 0.5, rel=1e-3)
    assert sig[t] / 0.5 <= TH.vanish_ratio and all(sig[s] / 0.5 > TH.vanish_ratio for s in sig if s < t)
    assert t - 1500 <= 300
    assert ev["evidence"]["symptoms"] == ["discriminator_dominates", "mode_collapse"]
    assert "symptoms: discriminator dominates" in ev["message"]
    assert any("Wasserstein" in r for r in ev["remedies"])
    # The same fall of the signal with an unsure D is not vanishing gradients (G may sit at an
    # optimum of a frozen D, as with d_lr=0).
    calm = stream(40, g_signal=signal, discriminator_score=0.4)
    assert "vanishing_gradients" not in kinds(run(calm).events)


def test_a_dominating_discriminator_is_the_cause_of_a_frozen_generators_blob():
    """G never moves (a blob, diversity 0.3 from the start) while D learns to reject it: while D
    is winning the blob is not called a collapse; once D dominates, that is the event, with the
    collapse among its symptoms (the remedy is for D, not a larger latent)."""
    g = lambda t: max(0.02, 0.5 - t / 2000)
    rows = stream(30, diversity=0.3, generator_score=g, discriminator_score=lambda t: 1.0 - g(t))
    events = run(rows).events
    assert kinds(events) == ["discriminator_dominates"]
    ev = events[0]
    assert ev["evidence"]["symptoms"] == ["mode_collapse"]
    assert ev["evidence"]["symptom_evidence"]["mode_collapse"]["diversity"] == 0.3
    assert not any("latent" in r for r in ev["remedies"][:2])
    onset = min(r["step"] for r in rows if r["generator_score"] <= TH.g_low and r["discriminator_score"] >= TH.d_high)
    assert 0 <= ev["step"] - onset <= 300


def test_a_dominating_generator_explains_the_collapse_it_causes():
    rows = stream(30, generator_score=after(300, 0.77), discriminator_score=after(300, 0.37),
                  diversity=after(600, 0.3, before=1.0))
    events = run(rows).events
    assert kinds(events) == ["generator_dominates"]
    later = run(rows[:10]).events  # the collapse arrives after G's dominance: no second event
    assert kinds(later) == ["generator_dominates"]


def test_poor_fit_when_samples_are_off_the_data_and_d_cannot_tell():
    """High-quality fraction below fit_min while both scores sit at 0.5 and the samples are not
    closing in on the modes: poor fit; not while D still has an edge, not while the samples'
    distance to the modes is falling, and not once they are on the modes."""
    def rows_with(quality, d=0.5, g=0.5, n=30, distance=lambda t: 5.0):
        rows = []
        for r in stream(n, discriminator_score=d, generator_score=g):
            rows += [r, {"step": r["step"], "high_quality_frac": quality(r["step"]), "modes_spread": 20.0,
                         "median_distance": distance(r["step"])}]
        return rows

    events = run(rows_with(lambda t: 0.03), num_modes=25).events
    assert kinds(events) == ["poor_fit"]
    # The first step judged: the window (t - 200, t] after the warm-up, and the same window
    # fit_window rounds earlier to compare the distance with.
    assert events[0]["step"] == TH.warmup + TH.window + TH.fit_window
    ev = events[0]["evidence"]
    assert ev["high_quality_frac"] == 0.03 and ev["median_distance"] == ev["median_distance_before"] == 5.0
    assert events[0]["remedies"][0].startswith("a discriminator that learns faster") and "d_lr=0.0004" in \
        events[0]["remedies"][0]
    assert run(rows_with(lambda t: 0.03, d=0.7, g=0.3), num_modes=25).events == []  # D has an edge
    assert run(rows_with(lambda t: 0.9), num_modes=25).events == []
    # Closing in: the distance falls 30% per 2000 rounds (fit_progress 0.2): learning, not stuck;
    # the same fall stopping at round 2000 is poor fit once the window no longer shows it.
    closing = lambda t: 50.0 * 0.7 ** (t / 2000)
    assert run(rows_with(lambda t: 0.03, distance=closing, n=50), num_modes=25).events == []
    stalls = run(rows_with(lambda t: 0.03, distance=lambda t: closing(min(t, 2000)), n=50), num_modes=25).events
    assert kinds(stalls) == ["poor_fit"]
    dist = lambda t: np.mean([closing(min(s, 2000)) for s in (t - 100, t)])  # a window: the rows (t - 200, t]
    fell = lambda t: 1.0 - dist(t) / dist(t - TH.fit_window)
    assert fell(stalls[0]["step"]) < TH.fit_progress <= fell(stalls[0]["step"] - 100)
    # Judged on the high-quality fraction over the long window (the live G's samples jitter):
    # the first step whose 1000-round mean is below fit_min, from the independent reference.
    late_rows = rows_with(lambda t: 0.95 if t <= 3000 else 0.1, n=50)
    late = run(late_rows, num_modes=25).events
    hq = window_means([r for r in late_rows if "high_quality_frac" in r], "high_quality_frac", TH.long_window,
                      TH.warmup)
    assert kinds(late) == ["poor_fit"] and late[0]["step"] == min(t for t in hq if hq[t] < TH.fit_min)
    # On images the evaluation's classifier-feature precision says it, at its own pace.
    image = stream(30) + [{"step": t, "precision_classifier": 0.2, "recall_classifier": 0.3} for t in (1000, 2000)]
    image.sort(key=lambda r: r["step"])
    assert kinds(run(image).events) == ["poor_fit"]


def test_non_convergence_on_sustained_oscillation_only():
    long_th = dataclasses.replace(TH, long_window=3000)
    swing = stream(60, generator_score=lambda t: 0.5 + 0.25 * math.sin(2 * math.pi * t / 800),
                   discriminator_score=lambda t: 0.5 - 0.1 * math.sin(2 * math.pi * t / 800))
    events = [e for e in run(swing, long_th).events if e["kind"] == "non_convergence"]
    assert len(events) == 1
    ev = events[0]
    t = ev["step"]
    assert t == long_th.score_warmup + long_th.long_window  # judged as soon as the window is covered
    values = np.array([r["generator_score"] for r in swing if t - 3000 < r["step"] <= t])
    assert ev["evidence"]["score"] == "generator_score"
    assert ev["evidence"]["std"] == pytest.approx(values.std(), rel=1e-3)
    crossings = np.count_nonzero(np.diff(np.sign(values - values.mean())) != 0)
    assert ev["evidence"]["crossings"] == crossings >= 4
    assert any("noise" in r for r in ev["remedies"]) and any("penalty" in r for r in ev["remedies"])
    damped = stream(60, generator_score=lambda t: 0.5 + 0.4 * math.exp(-t / 700) * math.sin(2 * math.pi * t / 800))
    assert "non_convergence" not in kinds(run(damped, long_th).events)
    trend = stream(60, generator_score=lambda t: 0.9 - 0.8 * t / 6000)
    assert "non_convergence" not in kinds(run(trend, long_th).events)
    small = stream(60, generator_score=lambda t: 0.5 + 0.05 * math.sin(2 * math.pi * t / 800))
    assert run(small, long_th).events == []


def test_converged_only_after_d_had_an_edge():
    d = lambda t: 0.75 if t <= 2000 else 0.51
    rows = stream(50, discriminator_score=d, generator_score=after(2000, 0.49, before=0.3),
                  d_accuracy_real=after(2000, 0.55, before=0.9), d_accuracy_fake=after(2000, 0.5, before=0.8))
    (ev,) = run(rows).events
    assert ev["kind"] == "converged"
    g, dm = (window_means(rows, k, TH.window, SW) for k in ("generator_score", "discriminator_score"))
    acc = {t: 0.5 * (a + f) for (t, a), f in zip(window_means(rows, "d_accuracy_real", TH.window, SW).items(),
                                                 window_means(rows, "d_accuracy_fake", TH.window, SW).values(),
                                                 strict=True)}
    expected = min(t for t in g if abs(g[t] - 0.5) <= 0.05 and abs(dm[t] - 0.5) <= 0.05 and abs(acc[t] - 0.5) <= 0.1)
    assert ev["step"] == expected and ev["evidence"]["max_discriminator_score"] == 0.75
    assert ev["evidence"]["d_accuracy"] == pytest.approx(acc[expected], rel=1e-3)
    assert "noise" in ev["message"] and any("best checkpoint" in r for r in ev["remedies"])
    assert any("look at the samples" in r for r in ev["remedies"])
    # A fresh discriminator also says 0.5 about everything: not convergence.
    assert run(stream(50)).events == []


# ----------------------------------------------------------------------------- policies


DOMINATED = stream(50, generator_score=after(1000, 0.02), discriminator_score=after(1000, 0.97))


def test_stop_policy_stops_an_unrecovered_failure_after_stop_after_steps():
    diag = run(DOMINATED, policy=Policy(mode="stop", stop_after=800))
    onset = next(e["step"] for e in diag.events if e["kind"] == "discriminator_dominates")
    (stop,) = [e for e in diag.events if e["kind"] == "stopped"]
    assert stop["step"] == onset + 800
    assert stop["evidence"] == {"failure": "discriminator_dominates", "since_step": onset, "steps_unrecovered": 800,
                                "policy": "stop", "stop_after": 800}
    assert "has not recovered for 800 steps" in diag.stop_reason and "will not come back" in diag.stop_reason
    assert "stopped" not in kinds(run(DOMINATED).events)  # warn (the default) only warns


def test_stop_on_converged():
    rows = stream(50, discriminator_score=lambda t: 0.7 if t <= 1000 else 0.5)
    diag = run(rows, policy=Policy(stop_on_converged=True))
    assert kinds(diag.events) == ["converged", "stopped"]
    assert diag.events[1]["step"] == diag.events[0]["step"] and "converged" in diag.stop_reason


# ----------------------------------------------------------------------------- remedies


def test_remedies_are_missions_lists_made_concrete_for_the_config():
    c = configs.Config(label_flip=0.1, latent_dim=64, g_hidden=(32, 32), loss="non_saturating")
    dd = diagnose.remedies("discriminator_dominates", c)
    assert dd[0].startswith("one-sided label flipping") and "label_flip=0.2" in dd[0]
    assert "g_hidden=64,64" in dd[2] and "d_hidden=64,64" in dd[3]
    collapse = diagnose.remedies("mode_collapse", c)
    assert "pack=2" in collapse[0] and "d_mbstd=true" in collapse[1] and "latent_dim=128" in collapse[3]
    vanish = diagnose.remedies("vanishing_gradients", c)
    assert "loss=wasserstein gp=10" in vanish[0] and vanish[-1].endswith("(already in use)")
    wgan = configs.Config(loss="wasserstein", gp=10.0)
    assert diagnose.remedies("mode_collapse", wgan)[-1].startswith("the Wasserstein loss")
    assert "gp=20" in diagnose.remedies("non_convergence", wgan)[2]
    gd = diagnose.REMEDIES["generator_dominates"]
    assert "discriminator" in gd[0] and "dropout in the generator" in gd[1] and "fewer" in gd[2]


def test_diag_config_keys_match_the_thresholds_and_are_validated():
    assert Thresholds.from_config(configs.Config()) == Thresholds()
    assert Policy.from_config(configs.Config()) == Policy()
    with pytest.raises(configs.ConfigError, match=r"diag\.g_low=1\.5"):
        configs.apply_overrides(configs.Config(), configs.parse_overrides(["diag.g_low=1.5"]))
    notes = []
    flat = configs.apply_overrides(configs.Config(), configs.parse_overrides(["diag_g_low=0.2"], warn=notes.append))
    assert flat.diag.g_low == 0.2 and notes == ["diag_g_low is now spelled diag.g_low (the flat spelling still "
                                                "works for now)"]
    with pytest.raises(configs.ConfigError, match=r"diag\.mode=.*choose warn"):
        configs.apply_overrides(configs.Config(), {"diag": "loud"})
    assert configs.DIAG_KEYS <= configs.RESUMABLE_CHANGES


# ----------------------------------------------------------------------------- in-step statistics


def test_mode_coverage_against_an_independent_count():
    centers = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])
    rng = np.random.default_rng(0)
    counts = [300, 100, 0, 50]
    on_modes = np.concatenate([c + 0.01 * rng.normal(size=(n, 2)) for c, n in zip(centers, counts, strict=True)])
    off = np.full((50, 2), 1.0)  # equidistant from every mode and 0.14 away: not high quality at std 0.02
    cov = coverage.quality(jnp.asarray(np.concatenate([on_modes, off]), jnp.float32), centers, 0.02)
    cov = {k: float(v) for k, v in cov.items()}
    assert cov["modes_captured"] == 3
    assert cov["high_quality_frac"] == pytest.approx(450 / 500)
    assert cov["modes_effective"] == pytest.approx(np.exp(scipy.stats.entropy([300, 100, 50])), rel=1e-5)
    # Every sample by its nearest mode (the 50 equidistant ones go to the first centre, argmin's
    # tie-break), and the median distance in std units (the 50 off-mode samples are the top 10%).
    assert cov["modes_spread"] == pytest.approx(np.exp(scipy.stats.entropy([350, 100, 0, 50])), rel=1e-5)
    dist = np.min(np.linalg.norm(np.concatenate([on_modes, off])[:, None] - centers[None], axis=-1), axis=1)
    assert cov["median_distance"] == pytest.approx(np.median(dist) / 0.02, rel=1e-4)


def test_game_scores_are_missions_definitions():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(1, 2, 64).astype(np.float32), rng.normal(-1, 2, 64).astype(np.float32)
    out = scores.game_scores(losses.NON_SATURATING, jnp.asarray(real), jnp.asarray(fake))
    sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
    assert float(out["generator_score"]) == pytest.approx(sig(fake).mean(), rel=1e-5)
    assert float(out["discriminator_score"]) == pytest.approx(0.5 * sig(real).mean() + 0.5 * (1 - sig(fake)).mean(),
                                                              rel=1e-5)
    assert float(out["d_accuracy_real"]) == pytest.approx((real > 0).mean())
    assert float(out["d_accuracy_fake"]) == pytest.approx((fake < 0).mean())


def test_diversity_of_collapsed_images_far_from_the_origin():
    # 64 near-identical "images" of 3072 values around 30: the Gram form without centring loses
    # the 1e-3 differences to float32 rounding of |x|^2 ~ 3e6.
    rng = np.random.default_rng(0)
    x = (30.0 + 1e-3 * rng.normal(size=(64, 3072))).astype(np.float32)
    ref = np.mean([np.linalg.norm(x[i].astype(np.float64) - x[j]) for i in range(64) for j in range(64) if i != j])
    assert float(scores.mean_pairwise_distance(jnp.asarray(x))) == pytest.approx(ref, rel=1e-3)
    real = rng.normal(size=(64, 3072)).astype(np.float32)
    assert float(scores.diversity(jnp.asarray(real), jnp.asarray(x))) < 0.01


# ----------------------------------------------------------------------------- stream hygiene


def test_clean_rows_keeps_the_resumed_session():
    rows = [{"step": 100, "a": 1}, {"step": 200, "a": 2}, {"step": 200, "modes": 3}, {"step": 300, "a": 3},
            # resumed from the checkpoint at 200: step 300 is logged again
            {"step": 300, "a": 30}, {"step": 400, "a": 40}]
    assert diagnose.clean_rows(rows) == [{"step": 100, "a": 1}, {"step": 200, "a": 2}, {"step": 200, "modes": 3},
                                         {"step": 300, "a": 30}, {"step": 400, "a": 40}]


def test_event_spans_for_plots():
    events = [{"step": 100, "kind": "mode_collapse"}, {"step": 300, "kind": "discriminator_dominates"},
              {"step": 500, "kind": "recovered", "evidence": {"failure": "mode_collapse"}},
              {"step": 600, "kind": "stopped", "evidence": {"failure": "discriminator_dominates"}}]
    assert viz.event_spans(events, 900) == [("mode_collapse", 100, 500), ("discriminator_dominates", 300, 900)]


# ----------------------------------------------------------------------------- report and CLI


def _fake_run(tmp_path, rows, events, **config):
    out = str(tmp_path / "run")
    cfg = configs.Config(steps=rows[-1]["step"], **config)
    rundir.create(out, cfg)
    rundir.append_jsonl(os.path.join(out, rundir.METRICS), rows)
    rundir.append_jsonl(os.path.join(out, rundir.EVENTS), events)
    return out, cfg


def test_report_of_a_running_run_and_its_replay(tmp_path):
    events = run(DOMINATED).events
    out, _ = _fake_run(tmp_path, DOMINATED, events)
    s = report.summarize(out)
    assert s.status.startswith("in progress")  # no summary.json yet
    assert s.active == {"discriminator_dominates": events[0]["step"]}
    assert s.final["generator_score"] == pytest.approx(0.02)
    assert s.advice[0].startswith("discriminator_dominates") and "label_flip=0.1" in s.advice[0]
    replayed = report.summarize(out, replay=True, overrides={"diag.g_low": 0.01})
    assert replayed.events == [] and replayed.replayed
    text = report.format_text(s)
    assert "generator score 0.020" in text and "what to try next" in text
    md, page = report.write_report(out, s)
    body = pathlib.Path(md).read_text()
    assert "![scores.png](scores.png)" in body and "discriminator_dominates" in body
    assert pathlib.Path(page).read_text().count("data:image/png;base64,") == 3
    rundir.write_json(os.path.join(out, rundir.SUMMARY), {"final_step": 5000, "stopped_by": None})
    assert report.summarize(out).status == "finished (5000 steps)"


def test_cli_diagnose(tmp_path):
    out, _ = _fake_run(tmp_path, DOMINATED, run(DOMINATED).events)
    cmd = [sys.executable, "-m", "jaxgan", "diagnose", "--run", out, "--json", "--no-report"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert [e["kind"] for e in summary["events"]] == ["discriminator_dominates"]
    res = subprocess.run([*cmd, "--set", "g_lr=0"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "only the diagnosis settings" in res.stderr
    res = subprocess.run([sys.executable, "-m", "jaxgan", "diagnose", "--run", str(tmp_path / "nope")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "does not exist" in res.stderr


# ----------------------------------------------------------------------------- TensorBoard


def test_tensorboard_observer_writes_scalars_and_events(tmp_path):
    from jaxgan import observers, tensorboard
    from tests.helpers import tiny_run

    out = str(tmp_path)
    writer = observers.Writer()
    obs = tensorboard.TensorBoardObserver()
    obs.on_start(observers.Context(tiny_run(), out, 0, writer))
    rows = stream(3, generator_score=lambda t: t / 1000)
    for r in rows:
        obs.on_row(r["step"], {k: v for k, v in r.items() if k != "step"}, "train")
    obs.on_event({"step": 300, "kind": "mode_collapse", "evidence": {"diversity": 0.2}, "remedies": ["x"]})
    obs.on_row(400, {"generator_score": 0.4}, "train")
    obs.on_end(400)
    writer.close()
    logdir = os.path.join(out, tensorboard.TB_DIR)
    events = tensorboard.read_events(logdir)
    scalars = tensorboard.scalars(logdir)
    assert scalars[("scores/generator_score", 200)] == pytest.approx(0.2)
    assert scalars[("scores/generator_score", 400)] == pytest.approx(0.4)
    assert scalars[("diversity/diversity", 100)] == 1.0
    texts = [(e.step, v.tensor.string_val[0].decode()) for e in events for v in e.summary.value
             if v.tag.startswith("events")]
    assert len(texts) == 1 and texts[0][0] == 300 and "mode_collapse" in texts[0][1]
