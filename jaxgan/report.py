"""What a run is doing, in words: the summary and one-page report of ``jaxgan diagnose``.

Reads a run directory (finished, stopped, or still training): its config, ``metrics.jsonl``,
``quality.jsonl``, ``events.jsonl`` and ``summary.json``. Says where the game stands (both scores, D's accuracy,
diversity, mode coverage, averaged over the last window), which failures were diagnosed and
which are still on, and what to try next; writes ``report.md`` and a self-contained
``report.html`` with the plots into ``<run>/report/``. With ``replay`` the detectors are run
again over the logged metrics (with thresholds that may differ from the run's own).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import os
from typing import Any

import numpy as np

from jaxgan import checkpoint, configs, diagnose, rundir
from jaxgan.configs import Config

REPORT_DIR = "report"
PLOTS = ("scores.png", "health.png", "losses.png")
_FINAL_KEYS = (
    "generator_score", "discriminator_score", "d_accuracy_real", "d_accuracy_fake", "wasserstein_estimate",
    "diversity", "g_grad_norm", "d_grad_norm", "d_loss", "g_loss",
)
_SNAPSHOT_KEYS = ("modes_captured", "modes_effective", "modes_spread", "high_quality_frac", "median_distance")


@dataclasses.dataclass
class Summary:
    """Everything ``jaxgan diagnose`` says about a run (JSON-ready via :meth:`to_dict`)."""

    run: str
    status: str
    step: int
    target_steps: int
    final: dict[str, float]
    final_window: list[int]
    events: list[dict[str, Any]]
    active: dict[str, int]
    advice: list[str]
    best: dict[str, Any] | None
    replayed: bool
    num_modes: int | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _num_modes(config: Config) -> int | None:
    from jaxgan.data import toy

    source = toy.TOY.get(config.dataset)
    if source is None or source.centers.shape[0] < 2:
        return None
    return int(source.centers.shape[0])


def _status(run: str, config: Config, last_step: int) -> str:
    summary_path = os.path.join(run, rundir.SUMMARY)
    if not os.path.exists(summary_path):
        return "in progress (or killed before its first session ended)"
    with open(summary_path, encoding="utf-8") as f:
        summary = json.load(f)
    final = int(summary.get("final_step", -1))
    if last_step > final:
        return f"in progress (last session ended at step {final}; metrics go on to {last_step})"
    if summary.get("stopped_by"):
        return f"stopped at step {final}: {summary['stopped_by']}"
    if final >= config.steps:
        return f"finished ({final} steps)"
    return f"interrupted at step {final} of {config.steps} (resume: jaxgan train --out {run})"


def _final(rows: list[dict[str, Any]], last_step: int, window: int) -> tuple[dict[str, float], list[int]]:
    history = diagnose.History()
    for row in rows:
        history.add(int(row["step"]), row)
    span = max(1, min(window, last_step))
    final: dict[str, float] = {}
    bounds = [last_step - span, last_step]
    for key in _FINAL_KEYS:
        w = history.window(key, last_step, span, warmup=0)
        if w is not None:
            final[key] = round(w.mean, 4)
            bounds[0] = w.start
    for key in _SNAPSHOT_KEYS:
        latest = history.latest(key)
        if latest is not None and np.isfinite(latest[1]):
            final[key] = round(latest[1], 4)
    return final, bounds


def advice(active: dict[str, int], events: list[dict[str, Any]], final: dict[str, float], config: Config,
           num_modes: int | None, best: dict[str, Any] | None, run: str) -> list[str]:
    """What to try next, most pressing first."""
    out: list[str] = []
    failures = [k for k in sorted(active, key=active.get) if k != "converged"]
    for kind in failures:
        tips = diagnose.remedies(kind, config)
        out.append(f"{kind} (since step {active[kind]}): try " + "; or ".join(tips[:3]))
    if "converged" in active:
        out.append(f"converged since step {active['converged']}: D's feedback is noise now; stop and keep the "
                   "best checkpoint rather than train on, and look at the samples (flat scores can hide collapse)")
    if not failures and "converged" not in active:
        past = sorted({e["evidence"].get("failure") for e in events if e.get("kind") == "recovered"} - {None})
        g, d = final.get("generator_score"), final.get("discriminator_score")
        if g is not None and d is not None:
            note = f"no failure is on now (generator score {g:.2f}, discriminator score {d:.2f})"
            if past:
                note += f"; earlier {', '.join(past)} recovered"
            out.append(note + ": keep training and look at the samples as you go")
    if num_modes and "modes_captured" in final:
        out.append(f"mode coverage at the last plot step: {final['modes_captured']:.0f} of {num_modes} modes captured, "
                   f"{100 * final.get('high_quality_frac', 0.0):.0f}% of samples high quality")
    if best is not None:
        metrics = ", ".join(f"{k}={v:g}" for k, v in best["metrics"].items())
        out.append(f"best checkpoint: step {best['step']} ({metrics}) in {os.path.join(run, checkpoint.BEST_DIR)}")
    return out


def summarize(run: str, *, replay: bool = False, overrides: dict[str, Any] | None = None) -> Summary:
    """The state of run directory ``run``. ``replay``: run the detectors again over its metrics
    (with ``overrides`` of the ``diag_*`` keys), instead of reading its ``events.jsonl``."""
    config = rundir.load_config(run)
    if overrides:
        config = configs.apply_overrides(config, overrides)
    rows = _rows(run)
    if not rows:
        raise rundir.RunDirError(f"{run!r} has no metrics yet: wait for its first logged step "
                                 f"(every {config.log_every} steps)")
    last_step = max(int(r["step"]) for r in rows)
    num_modes = _num_modes(config)
    if replay:
        diag = diagnose.replay(rows, diagnose.Thresholds.from_config(config), diagnose.Policy.from_config(config),
                               config=config, num_modes=num_modes)
        events, active = diag.events, dict(diag.active)
    else:
        events = rundir.read_jsonl(os.path.join(run, rundir.EVENTS))
        active = _active(events)
    final, window = _final(rows, last_step, config.diag.window)
    best_path = os.path.join(run, checkpoint.BEST_FILE)
    best = None
    if os.path.isfile(best_path):
        with open(best_path, encoding="utf-8") as f:
            best = json.load(f)
    return Summary(
        run=run, status=_status(run, config, last_step), step=last_step, target_steps=config.steps,
        final=final, final_window=window, events=events, active=active,
        advice=advice(active, events, final, config, num_modes, best, run), best=best, replayed=replay,
        num_modes=num_modes,
    )


def _rows(run: str) -> list[dict[str, Any]]:
    """The training rows and the sample-quality rows of a run, in step order."""
    rows = []
    for name in (rundir.METRICS, rundir.QUALITY):
        rows += diagnose.clean_rows(rundir.read_jsonl(os.path.join(run, name)))
    return sorted(rows, key=lambda r: int(r["step"]))


def _active(events: list[dict[str, Any]]) -> dict[str, int]:
    """Failures with an onset event and no recovery after it."""
    active: dict[str, int] = {}
    for ev in events:
        kind = ev.get("kind")
        if kind == "recovered":
            active.pop(ev.get("evidence", {}).get("failure"), None)
        elif kind in diagnose.KINDS and kind not in active:
            active[kind] = int(ev["step"])
    return active


def _event_line(ev: dict[str, Any]) -> str:
    msg = ev.get("message") or json.dumps(ev.get("evidence", {}))
    return f"step {ev['step']}: {ev['kind']}: {msg}"


def format_text(s: Summary) -> str:
    """The console summary."""
    lines = [f"run {s.run}: {s.status}"]
    f = s.final
    if "generator_score" in f:
        lines.append(
            f"last {s.final_window[1] - s.final_window[0]} steps: generator score {f['generator_score']:.3f}, "
            f"discriminator score {f.get('discriminator_score', float('nan')):.3f}, D accuracy real "
            f"{f.get('d_accuracy_real', float('nan')):.2f} / fake {f.get('d_accuracy_fake', float('nan')):.2f}, "
            f"diversity {f.get('diversity', float('nan')):.2f} (0.5 and 0.5 is the equilibrium; diversity 1 is the "
            "data's spread)"
        )
    header = "events (replayed from metrics.jsonl):" if s.replayed else "events:"
    lines.append(header if s.events else "events: none")
    lines.extend(f"  {_event_line(ev)}" for ev in s.events)
    if s.active:
        lines.append("still on: " + ", ".join(f"{k} (since step {v})" for k, v in s.active.items()))
    lines.append("what to try next:")
    lines.extend(f"  - {a}" for a in s.advice)
    return "\n".join(lines)


def _plots(run: str, s: Summary, config: Config, out_dir: str) -> list[str]:
    from jaxgan import viz

    rows = diagnose.clean_rows(rundir.read_jsonl(os.path.join(run, rundir.METRICS)))
    quality = diagnose.clean_rows(rundir.read_jsonl(os.path.join(run, rundir.QUALITY)))
    viz.score_plot(rows, os.path.join(out_dir, "scores.png"), s.events)
    viz.health_plot(rows, os.path.join(out_dir, "health.png"), s.events, quality=quality,
                    diversity_min=config.diag.diversity_min, num_modes=s.num_modes)
    viz.loss_plot(rows, os.path.join(out_dir, "losses.png"), s.events)
    paths = [os.path.join(out_dir, name) for name in PLOTS]
    samples = sorted(n for n in os.listdir(run) if n.startswith("samples_") and n.endswith(".png"))
    over_time = [n for n in samples if n == "samples_over_time.png"]
    steps = [n for n in samples if n != "samples_over_time.png"]
    paths += [os.path.join(run, n) for n in over_time + steps[-1:]]
    return paths


def write_report(run: str, s: Summary) -> tuple[str, str]:
    """Write ``<run>/report/report.md`` (plots linked) and ``report.html`` (plots embedded)."""
    config = rundir.load_config(run)
    out_dir = os.path.join(run, REPORT_DIR)
    os.makedirs(out_dir, exist_ok=True)
    plots = _plots(run, s, config, out_dir)
    f = s.final
    table = [("step", f"{s.step} of {s.target_steps}")]
    table += [(k.replace("_", " "), f"{v:.4g}") for k, v in f.items()]
    md = [f"# jaxgan run report: `{s.run}`", "", f"**Status:** {s.status}", "",
          f"Preset `{config.preset}`, loss `{config.loss}`, dataset `{config.dataset}`, "
          f"unroll steps {config.unroll_steps}.", "",
          f"## Where the game stands (mean over steps {s.final_window[0]}-{s.final_window[1]})", "",
          "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in table], "",
          "Both scores near 0.5 is the equilibrium (D flipping a coin); diversity near 1 means G spreads "
          "like the data.", "", "## What to try next", "", *[f"- {a}" for a in s.advice], "",
          "## Events" + (" (replayed)" if s.replayed else ""), ""]
    md += [f"- {_event_line(ev)}" for ev in s.events] or ["No failure was diagnosed."]
    md += ["", "## Plots", ""]
    md += [f"![{os.path.basename(p)}]({os.path.relpath(p, out_dir)})" for p in plots]
    md_path = os.path.join(out_dir, "report.md")
    with open(md_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(md) + "\n")

    def img(path: str) -> str:
        with open(path, "rb") as fh:
            data = base64.b64encode(fh.read()).decode("ascii")
        return f'<img alt="{html.escape(os.path.basename(path))}" src="data:image/png;base64,{data}">'

    esc = html.escape
    body = [f"<h1>jaxgan run report: <code>{esc(s.run)}</code></h1>", f"<p><b>Status:</b> {esc(s.status)}</p>",
            f"<h2>Where the game stands (steps {s.final_window[0]}-{s.final_window[1]})</h2><table>",
            *[f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in table], "</table>",
            "<h2>What to try next</h2><ul>", *[f"<li>{esc(a)}</li>" for a in s.advice], "</ul>",
            "<h2>Events</h2><ul>", *([f"<li>{esc(_event_line(ev))}</li>" for ev in s.events]
                                     or ["<li>No failure was diagnosed.</li>"]), "</ul>",
            "<h2>Plots</h2>", *[img(p) for p in plots]]
    style = ("body{font-family:sans-serif;max-width:1000px;margin:auto}img{max-width:100%;display:block;"
             "margin:8px 0}td{padding:2px 12px}")
    html_path = os.path.join(out_dir, "report.html")
    with open(html_path, "w", encoding="utf-8") as fh:
        fh.write(f"<!doctype html><html><head><meta charset='utf-8'><title>jaxgan report</title>"
                 f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")
    return md_path, html_path
