"""The monitor against ground truth: a labelled suite of short, deterministic runs.

Each case is a run whose truth is known, from the toy data's modes or by construction (a frozen
player, a learning rate far too high, a blow-up): healthy ring and grid, frozen G, frozen D,
Metz et al.'s plain GAN collapsing on the ring and the grid, a generator that covers the data's
region but sits off its modes, an oscillating game, vanishing gradients, NaN. Every case trains
through ``jaxgan.loop.train`` with the default observers (what ``jaxgan train`` runs), then:

* the failure events it raised (``events.jsonl``; ``recovered``, ``converged`` and ``stopped``
  are not failures), each judged against the kinds the case accepts;
* the **onset**: the first logged row where the case's condition holds, read from the rows with
  an independent rule (the case's ``truth``); the **latency**: the step of the first acceptable
  event minus the onset, in rounds.

At the end it prints a confusion table (case -> kinds raised) and one JSON line with
``precision`` (acceptable failure events / failure events), ``recall`` (failing cases named with
an acceptable kind / failing cases), ``false_alarms_on_healthy`` (failure events on the healthy
cases) and ``median_latency`` (over failing cases that were named).

    python benchmarks/diagnosis_suite.py --out benchmarks/results/diagnosis_suite.jsonl
    python benchmarks/diagnosis_suite.py --cases frozen-g nan --keep /tmp/suite
    python benchmarks/diagnosis_suite.py --replay /tmp/suite --set diag.window=300   # re-judge, no training
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from jaxgan import bench, configs, cpu, diagnose, loop, report, rundir
from jaxgan.nonfinite import NonFiniteError

NOT_FAILURES = {"recovered", "converged", "stopped"}
Rows = list[dict]


def _first(rows: Rows, cond: Callable[[dict], bool]) -> int | None:
    return next((int(r["step"]) for r in rows if cond(r)), None)


def scores_dominated(th: diagnose.Thresholds) -> Callable[[Rows, Rows], int | None]:
    """D dominates: a row with generator score <= g_low and discriminator score >= d_high."""
    return lambda rows, _q: _first(rows, lambda r: r.get("generator_score", 1) <= th.g_low
                                   and r.get("discriminator_score", 0) >= th.d_high)


def generator_fools(th: diagnose.Thresholds) -> Callable[[Rows, Rows], int | None]:
    """G dominates: a row with generator score >= g_high."""
    return lambda rows, _q: _first(rows, lambda r: r.get("generator_score", 0) >= th.g_high)


def few_modes(num_modes: int) -> Callable[[Rows, Rows], int | None]:
    """Collapse, from the toy ground truth: G's samples, each counted at its nearest mode,
    spread over at most half the modes' territories (``modes_spread``), after the first 500
    rounds (a fresh G is a blob before it spreads)."""
    return lambda _rows, q: _first(q, lambda r: r["step"] > 500 and r.get("modes_spread", num_modes) <= num_modes / 2)


def off_modes(th: diagnose.Thresholds) -> Callable[[Rows, Rows], int | None]:
    """Poor fit, from the toy ground truth: after the warm-up, the first row from which fewer
    than half of G's samples are high quality for the rest of the run, and whose samples' median
    distance to a mode fell by less than ``fit_progress`` (a fifth) over the ``fit_window`` (2000)
    rounds before it: stuck off the modes, not closing in."""
    def truth(_rows: Rows, q: Rows) -> int | None:
        late = [r for r in q if r["step"] > th.warmup and "median_distance" in r]
        for i, r in enumerate(late):
            if not all(x.get("high_quality_frac", 1) < 0.5 for x in late[i:]):
                continue
            before = [x for x in late if x["step"] <= r["step"] - th.fit_window]
            if before and r["median_distance"] >= (1 - th.fit_progress) * before[-1]["median_distance"]:
                return int(r["step"])
        return None
    return truth


def swinging(th: diagnose.Thresholds) -> Callable[[Rows, Rows], int | None]:
    """An oscillating game: the first row after the 500 opening rounds (which swing in every run:
    up to 0.17 on the grid25 preset) whose generator or discriminator score swings by
    ``osc_swing`` (std, 0.15) from round to round, half as much again as the healthy presets'
    largest swing after them (0.117, grid25's generator score)."""
    return lambda rows, _q: _first(rows, lambda r: r["step"] > th.warmup and max(r.get("generator_score_swing", 0),
                                                       r.get("discriminator_score_swing", 0)) >= th.osc_swing)


def gradients_vanish(rows: Rows, _q: Rows) -> int | None:
    """Vanishing gradients: the slope of G's loss at D's verdict (``g_signal``) below 5% of its
    largest earlier value while D scores >= 0.85."""
    peak = 0.0
    for r in rows:
        g = r.get("g_signal")
        if g is None or not np.isfinite(g):
            continue
        if peak > 0 and g <= 0.05 * peak and r.get("discriminator_score", 0) >= 0.85:
            return int(r["step"])
        peak = max(peak, g)
    return None


def first_nan(rows: Rows, _q: Rows) -> int | None:
    return _first(rows, lambda r: any(r.get(k, 0) not in (0, 0.0, None) for k in ("d_nonfinite", "g_nonfinite")))


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    preset: str
    overrides: dict
    accept: frozenset[str]  # empty: healthy (no failure event is right)
    truth: Callable[[Rows, Rows], int | None] | None = None
    why: str = ""


TH = diagnose.Thresholds()
# The grid25 preset as it was before issue 21 (tanh 2x128 MLPs, Adam 1e-3 / 1e-4, no remedy):
# it spreads over the grid's square but few samples sit on modes.
OLD_GRID = {"latent_dim": 256, "g_hidden": (128, 128), "d_hidden": (128, 128), "activation": "tanh", "g_lr": 1e-3,
            "d_lr": 1e-4, "pack": 1, "d_mbstd": False, "lr_decay": "none", "ema_decay": 0.0, "batch_size": 512,
            "steps": 5000}

CASES = (
    Case("healthy-ring", "ring8", {}, frozenset(), why="the ring8 preset"),
    Case("healthy-grid", "grid25", {}, frozenset(), why="the grid25 preset"),
    Case("frozen-g", "ring8", {"g_lr": 0.0, "steps": 1500}, frozenset({"discriminator_dominates"}),
         scores_dominated(TH), "G never moves; D learns to reject its blob"),
    Case("frozen-g-fast-d", "ring8", {"g_lr": 0.0, "d_lr": 3e-3, "steps": 1500},
         frozenset({"discriminator_dominates"}), scores_dominated(TH), "the same with a 3x faster D"),
    Case("frozen-d", "ring8", {"d_lr": 0.0, "steps": 2000}, frozenset({"generator_dominates"}),
         generator_fools(TH), "D never learns; G drifts to where D's fixed logit is high"),
    Case("collapse-metz-ring", "metz-ring8", {"steps": 5000}, frozenset({"mode_collapse"}), few_modes(8),
         "Metz et al.'s plain GAN: one blob hopping from mode to mode"),
    Case("collapse-metz-grid", "metz-grid25", {"steps": 5000}, frozenset({"mode_collapse"}), few_modes(25),
         "the same on the grid"),
    Case("off-modes", "grid25", OLD_GRID, frozenset({"poor_fit"}), off_modes(TH),
         "covers the grid's square, few samples on the modes, scores at 0.5"),
    Case("oscillating", "ring8", {"d_hidden": (8,), "d_activation": "", "pack": 1, "activation": "relu",
                                  "g_lr": 1e-2, "d_lr": 1e-2, "simultaneous": True, "steps": 2000},
         frozenset({"non_convergence", "mode_collapse"}), swinging(TH),
         "simultaneous updates of a small ReLU D and G at 10x the rate: the scores jump and G's spread with "
         "them (diversity 0.02 to 18 from row to row), so a collapse is an acceptable name too"),
    Case("vanishing", "ring8", {"loss": "minimax", "d_lr": 3e-3, "d_steps": 5, "steps": 2000},
         frozenset({"vanishing_gradients", "discriminator_dominates"}), gradients_vanish,
         "saturating minimax loss against a strong D"),
    Case("nan", "ring8", {"g_lr": 1e5, "d_lr": 1e5, "loss": "wasserstein", "activation": "relu", "steps": 200},
         frozenset({"nan"}), first_nan, "a blow-up"),
)


def run_case(case: Case, root: str, extra: dict, replay: bool = False) -> dict:
    """Train ``case`` into ``root/<name>`` and judge its events; ``replay``: judge the run kept
    there by an earlier invocation again, with the detectors' current rules and ``extra``."""
    config = configs.apply_overrides(configs.preset(case.preset), {"tensorboard": False, **case.overrides, **extra})
    out = os.path.join(root, case.name)
    wall = None
    if replay:  # the detectors' events again; NaN events are the non-finite guard's, as logged
        events = report.summarize(out, replay=True, overrides={k: v for k, v in extra.items()
                                                               if k.startswith("diag.")}).events
        events += [e for e in rundir.read_jsonl(os.path.join(out, rundir.EVENTS)) if e["kind"] == "nan"]
        events.sort(key=lambda e: int(e["step"]))
    else:
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        try:
            loop.train(config, out, progress=False, echo=lambda _m: None)
        except NonFiniteError:
            pass
        wall = round(time.perf_counter() - t0, 1)
        events = rundir.read_jsonl(os.path.join(out, rundir.EVENTS))
    rows = diagnose.clean_rows(rundir.read_jsonl(os.path.join(out, rundir.METRICS)))
    quality = diagnose.clean_rows(rundir.read_jsonl(os.path.join(out, rundir.QUALITY)))
    events = [e for e in events if e["kind"] not in NOT_FAILURES]
    raised = [{"step": int(e["step"]), "kind": e["kind"],
               "symptoms": e.get("evidence", {}).get("symptoms", [])} for e in events]
    onset = case.truth(rows, quality) if case.truth is not None else None
    named = [e for e in raised if e["kind"] in case.accept]
    latency = None
    if named and onset is not None:
        latency = max(0, named[0]["step"] - onset)
    return {"case": case.name, "why": case.why, "accept": sorted(case.accept) or ["(healthy)"], "raised": raised,
            "onset": onset, "first_named": named[0]["step"] if named else None, "latency": latency,
            "true_events": len(named), "false_events": len(raised) - len(named), "steps": config.steps,
            "wall_s": wall}


def summary(results: list[dict]) -> dict:
    events = sum(r["true_events"] + r["false_events"] for r in results)
    failing = [r for r in results if r["accept"] != ["(healthy)"]]
    named = [r for r in failing if r["true_events"] > 0]
    latencies = [r["latency"] for r in named if r["latency"] is not None]
    return {
        "precision": round(sum(r["true_events"] for r in results) / events, 4) if events else 1.0,
        "recall": round(len(named) / len(failing), 4) if failing else 1.0,
        "false_alarms_on_healthy": sum(r["false_events"] for r in results if r["accept"] == ["(healthy)"]),
        "median_latency": float(np.median(latencies)) if latencies else None,
        "max_latency": max(latencies) if latencies else None,
        "cases": len(results),
    }


def confusion(results: list[dict]) -> str:
    kinds = sorted({e["kind"] for r in results for e in r["raised"]})
    head = ["case", "accepts", *kinds, "onset", "first named", "latency"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        counts = [str(sum(e["kind"] == k for e in r["raised"]) or "") for k in kinds]
        lines.append("| " + " | ".join([r["case"], ", ".join(r["accept"]), *counts, str(r["onset"]),
                                        str(r["first_named"]), str(r["latency"])]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=[c.name for c in CASES], choices=[c.name for c in CASES])
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="overrides for every case (e.g. diag.window=300 to try another threshold)")
    p.add_argument("--keep", default=None, help="keep the run directories here (default: a temporary directory)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    p.add_argument("--replay", default=None, metavar="DIR",
                   help="train nothing: judge the runs an earlier --keep DIR kept, with the current rules and --set")
    args = p.parse_args(argv)
    cpu.tune(warn=False)
    extra = configs.parse_overrides(args.set)
    root = args.replay or args.keep or tempfile.mkdtemp(prefix="jaxgan-suite-")
    results = []
    for case in (c for c in CASES if c.name in args.cases):
        res = run_case(case, root, extra, replay=args.replay is not None)
        results.append(res)
        print(json.dumps({"benchmark": "diagnosis_suite", **res}), flush=True)
    print(confusion(results), file=sys.stderr)
    line = {"benchmark": "diagnosis_suite", "command": " ".join(["python", *sys.argv]), **summary(results),
            "overrides": args.set, "thresholds": dataclasses.asdict(TH), "machine": bench.machine()}
    print(json.dumps(line), flush=True)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "a") as f:
            for res in results:
                f.write(json.dumps({"benchmark": "diagnosis_suite", **res}) + "\n")
            f.write(json.dumps(line) + "\n")
    if not (args.keep or args.replay):
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
