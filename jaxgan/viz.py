"""Pictures of a run: score and loss curves, 2-D samples over the data density, image grids.

Every function writes one PNG atomically (to a temporary name, then renamed) so a reader never
sees half a file. Figures are ``matplotlib.figure.Figure`` objects drawn with the Agg canvas,
outside pyplot's global figure registry, so the loop's background writer can draw them while
the main thread trains.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure


def _subplots(*args, figsize, **kwargs):
    """``(fig, axes)`` as ``pyplot.subplots`` returns them, on a figure pyplot does not track."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*args, **kwargs)


def _save(fig, path: str) -> None:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    os.replace(tmp, path)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps, float), np.asarray(values, float)


# One colour per diagnosis kind, so a reader can match the bands on every plot.
EVENT_COLORS = {
    "discriminator_dominates": "tab:red",
    "generator_dominates": "tab:blue",
    "mode_collapse": "tab:purple",
    "vanishing_gradients": "tab:brown",
    "non_convergence": "tab:olive",
    "poor_fit": "tab:pink",
    "converged": "tab:green",
    "nan": "black",
}


def event_spans(events: Sequence[dict[str, Any]], end: float) -> list[tuple[str, float, float]]:
    """``(kind, onset, end)`` of each failure in ``events``: until its ``recovered`` event, or
    ``end`` (the last step) when it has not recovered."""
    open_at: dict[str, float] = {}
    spans = []
    for ev in events:
        kind = ev.get("kind")
        if kind == "recovered":
            failure = ev.get("evidence", {}).get("failure")
            if failure in open_at:
                spans.append((failure, open_at.pop(failure), float(ev["step"])))
        elif kind in EVENT_COLORS and kind not in open_at:
            open_at[kind] = float(ev["step"])
    spans.extend((kind, start, max(end, start)) for kind, start in open_at.items())
    return sorted(spans, key=lambda s: s[1])


def mark_events(ax, events: Sequence[dict[str, Any]], end: float, *, label: bool = True) -> None:
    """Shade each failure from onset to recovery, in its kind's colour; a black line where the
    policy stopped the run."""
    seen = set()
    for kind, start, stop in event_spans(events, end):
        color = EVENT_COLORS[kind]
        ax.axvspan(start, stop, color=color, alpha=0.12, lw=0)
        ax.axvline(start, color=color, lw=1.0, alpha=0.8,
                   label=kind.replace("_", " ") if label and kind not in seen else None)
        seen.add(kind)
    for ev in events:
        if ev.get("kind") == "stopped":
            ax.axvline(ev["step"], color="black", lw=1.5, ls="-.", label="stopped" if label else None)


def _last_step(rows: Sequence[dict[str, Any]]) -> float:
    return float(max((r["step"] for r in rows), default=0))


def score_plot(rows: Sequence[dict[str, Any]], path: str, events: Sequence[dict[str, Any]] = ()) -> None:
    """Generator and discriminator scores over steps, D's accuracies, the 0.5 line (the game's
    equilibrium), and each diagnosed failure shaded from onset to recovery."""
    fig, ax = _subplots(figsize=(9, 4))
    for key, label, color in (
        ("generator_score", "generator score", "tab:blue"),
        ("discriminator_score", "discriminator score", "tab:orange"),
        ("d_accuracy_real", "D accuracy (real)", "tab:green"),
        ("d_accuracy_fake", "D accuracy (fake)", "tab:red"),
    ):
        steps, values = _series(rows, key)
        style = "-" if "score" in key else ":"
        ax.plot(steps, values, style, label=label, color=color, lw=1.8 if "score" in key else 1.0)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--", label="0.5 (equilibrium)")
    mark_events(ax, events, _last_step(rows))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("score (0 to 1)")
    ax.set_title("How each player is doing (shaded: diagnosed failures)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def health_plot(
    rows: Sequence[dict[str, Any]],
    path: str,
    events: Sequence[dict[str, Any]] = (),
    *,
    quality: Sequence[dict[str, Any]] = (),
    diversity_min: float | None = None,
    num_modes: int | None = None,
) -> None:
    """What the detectors read besides the scores: sample diversity (fake spread over real
    spread, 1 when G spreads like the data), both players' gradient norms (log scale), and on
    toy data the modes covered and the high-quality fraction of G's samples (``quality`` rows,
    or ``rows`` when they carry those keys)."""
    quality = list(quality) or [r for r in rows if "modes_effective" in r]
    has_modes = any("modes_effective" in r for r in quality)
    n = 3 if has_modes else 2
    fig, axes = _subplots(n, 1, figsize=(9, 2.4 * n), sharex=True)
    end = _last_step(rows)
    ax = axes[0]
    steps, values = _series(rows, "diversity")
    ax.plot(steps, values, color="tab:purple", label="diversity (fake / real)")
    ax.axhline(1.0, color="gray", lw=0.8, ls="--", label="the data's spread")
    if diversity_min is not None:
        ax.axhline(diversity_min, color="tab:purple", lw=0.8, ls=":", label="collapse threshold")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("diversity")
    ax = axes[1]
    for key, color in (("g_grad_norm", "tab:blue"), ("d_grad_norm", "tab:orange")):
        steps, values = _series(rows, key)
        ok = values > 0
        ax.plot(steps[ok], values[ok], color=color, label=key)
    if any(r.get("g_grad_norm") for r in rows):
        ax.set_yscale("log")
    ax.set_ylabel("gradient norm")
    if has_modes:
        ax = axes[2]
        for key, color, style in (("modes_effective", "tab:purple", "o-"), ("modes_captured", "tab:gray", "s--")):
            steps, values = _series(quality, key)
            ax.plot(steps, values, style, color=color, ms=3, label=key.replace("_", " "))
        if num_modes:
            ax.axhline(num_modes, color="gray", lw=0.8, ls="--", label=f"{num_modes} modes in the data")
        ax.set_ylim(bottom=0)
        ax.set_ylabel("modes")
        twin = ax.twinx()
        steps, values = _series(quality, "high_quality_frac")
        twin.plot(steps, values, ":", color="tab:green", label="high-quality fraction (right)")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("high quality", color="tab:green")
    for i, ax in enumerate(axes):
        mark_events(ax, events, end, label=False)
        ax.grid(alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        if has_modes and i == 2:
            more = twin.get_legend_handles_labels()
            handles, labels = handles + more[0], labels + more[1]
        ax.legend(handles, labels, loc="center left", bbox_to_anchor=(1.1, 0.5), fontsize=8)
    axes[-1].set_xlabel("step")
    axes[0].set_title("What the detectors read (shaded: diagnosed failures)")
    _save(fig, path)


def loss_plot(rows: Sequence[dict[str, Any]], path: str, events: Sequence[dict[str, Any]] = ()) -> None:
    """D and G losses over steps (GAN losses oscillate; they are not a progress bar), with the
    diagnosed failures shaded as on the score plot."""
    fig, ax = _subplots(figsize=(8, 4))
    for key, color in (("d_loss", "tab:orange"), ("g_loss", "tab:blue")):
        steps, values = _series(rows, key)
        ax.plot(steps, values, label=key, color=color)
    mark_events(ax, events, _last_step(rows))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    _save(fig, path)


def scatter_2d(
    samples: np.ndarray,
    path: str,
    *,
    log_density=None,
    centers: np.ndarray | None = None,
    title: str = "",
    limit: float | None = None,
) -> None:
    """Generated 2-D samples over the real data's density (contours) and mode centres."""
    _save(scatter_2d_figure(samples, log_density=log_density, centers=centers, title=title, limit=limit), path)


def scatter_2d_figure(
    samples: np.ndarray,
    *,
    log_density=None,
    centers: np.ndarray | None = None,
    title: str = "",
    limit: float | None = None,
):
    """The figure of :func:`scatter_2d` (for writers that take a figure, e.g. TensorBoard)."""
    samples = np.asarray(samples)
    fig, ax = _subplots(figsize=(5, 5))
    if limit is None:
        ref = centers if centers is not None else samples
        limit = float(np.max(np.abs(ref))) * 1.4 + 0.5
    if log_density is not None:
        grid = np.linspace(-limit, limit, 200)
        xx, yy = np.meshgrid(grid, grid)
        dens = np.exp(log_density(np.stack([xx.ravel(), yy.ravel()], 1))).reshape(xx.shape)
        ax.contourf(xx, yy, dens, levels=20, cmap="Greens", alpha=0.6)
    ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", alpha=0.5, label="generated")
    if centers is not None:
        ax.scatter(centers[:, 0], centers[:, 1], s=30, marker="x", c="black", label="modes")
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.legend(loc="upper right", fontsize=7)
    return fig


def scatter_over_time(
    frames: Sequence[tuple[int, np.ndarray]],
    path: str,
    *,
    centers: np.ndarray | None = None,
    limit: float | None = None,
) -> None:
    """A row of 2-D sample scatters, one per (step, samples) frame (the unrolled-GAN figure)."""
    n = len(frames)
    fig, axes = _subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
    if limit is None:
        ref = centers if centers is not None else frames[-1][1]
        limit = float(np.max(np.abs(ref))) * 1.4 + 0.5
    for ax, (step, samples) in zip(axes[0], frames, strict=True):
        if centers is not None:
            ax.scatter(centers[:, 0], centers[:, 1], s=12, marker="x", c="black")
        ax.scatter(samples[:, 0], samples[:, 1], s=1, c="tab:blue", alpha=0.4)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"step {step}", fontsize=8)
    _save(fig, path)


def grid_array(images: np.ndarray, *, columns: int | None = None) -> np.ndarray:
    """Images ``[N, H, W, C]`` in [-1, 1] tiled into one ``[rows*(H+1)+1, cols*(W+1)+1, C]``
    array in [0, 1], with 1-pixel white borders."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    pix = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pix[i]
    return canvas


def image_grid(images: np.ndarray, path: str, *, columns: int | None = None, title: str = "") -> None:
    """A grid of images ``[N, H, W, C]`` with values in [-1, 1] (C = 1 or 3)."""
    canvas = grid_array(images, columns=columns)
    n, h, w, c = np.shape(images)
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, ax = _subplots(figsize=(max(2.0, cols * w / 28), max(2.0, rows * h / 28)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path)


def metrics_plot(rows: Sequence[dict[str, Any]], path: str, *, keys: Sequence[str] | None = None,
                 title: str = "") -> None:
    """One small panel per numeric metric over steps (e.g. the rows of ``eval.jsonl``)."""
    skip = {"step", "n", "seed"}
    if keys is None:
        keys = sorted({k for r in rows for k, v in r.items()
                       if k not in skip and isinstance(v, int | float) and not isinstance(v, bool)})
    keys = [k for k in keys if _series(rows, k)[0].size]
    if not keys:
        return
    cols = min(4, len(keys))
    nrows = -(-len(keys) // cols)
    fig, axes = _subplots(nrows, cols, figsize=(3.2 * cols, 2.4 * nrows), squeeze=False)
    for ax, key in zip(axes.ravel(), keys, strict=False):
        steps, values = _series(rows, key)
        ax.plot(steps, values, "o-", ms=3, lw=1.2)
        ax.set_title(key, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
