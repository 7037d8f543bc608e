"""Pictures of a run: score and loss curves, 2-D samples over the data density, image grids.

Every function writes one PNG atomically (to a temporary name, then renamed) so a reader never
sees half a file. matplotlib runs with the non-interactive Agg backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _save(fig, path: str) -> None:
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def _series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pts, strict=True)
    return np.asarray(steps, float), np.asarray(values, float)


def score_plot(rows: Sequence[dict[str, Any]], path: str, events: Sequence[dict[str, Any]] = ()) -> None:
    """Generator and discriminator scores over steps, the 0.5 line, and diagnosis events."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label, color in (
        ("generator_score", "generator score", "tab:blue"),
        ("discriminator_score", "discriminator score", "tab:orange"),
        ("d_accuracy_real", "D accuracy (real)", "tab:green"),
        ("d_accuracy_fake", "D accuracy (fake)", "tab:red"),
    ):
        steps, values = _series(rows, key)
        style = "-" if "score" in key else ":"
        ax.plot(steps, values, style, label=label, color=color, lw=1.5 if "score" in key else 1.0)
    ax.axhline(0.5, color="gray", lw=0.8, ls="--", label="0.5 (equilibrium)")
    kinds_seen = set()
    for ev in events:
        kind = ev.get("kind", "event")
        ax.axvline(ev["step"], color="tab:purple", lw=0.8, alpha=0.6)
        if kind not in kinds_seen:
            ax.text(ev["step"], 1.02, kind, rotation=90, fontsize=7, va="bottom", color="tab:purple")
            kinds_seen.add(kind)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("score (0 to 1)")
    ax.set_title("How each player is doing")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def loss_plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """D and G losses over steps (GAN losses oscillate; they are not a progress bar)."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, color in (("d_loss", "tab:orange"), ("g_loss", "tab:blue")):
        steps, values = _series(rows, key)
        ax.plot(steps, values, label=key, color=color)
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
    samples = np.asarray(samples)
    fig, ax = plt.subplots(figsize=(5, 5))
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
    _save(fig, path)


def scatter_over_time(
    frames: Sequence[tuple[int, np.ndarray]],
    path: str,
    *,
    centers: np.ndarray | None = None,
    limit: float | None = None,
) -> None:
    """A row of 2-D sample scatters, one per (step, samples) frame (the unrolled-GAN figure)."""
    n = len(frames)
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n, 2.4), squeeze=False)
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


def image_grid(images: np.ndarray, path: str, *, columns: int | None = None, title: str = "") -> None:
    """A grid of images ``[N, H, W, C]`` with values in [-1, 1] (C = 1 or 3)."""
    images = np.asarray(images, np.float32)
    n, h, w, c = images.shape
    cols = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    canvas = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    pix = np.clip((images + 1.0) / 2.0, 0.0, 1.0)
    for i in range(n):
        r, q = divmod(i, cols)
        canvas[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + q * (w + 1) : 1 + q * (w + 1) + w] = pix[i]
    fig, ax = plt.subplots(figsize=(max(2.0, cols * w / 28), max(2.0, rows * h / 28)))
    ax.imshow(canvas[..., 0] if c == 1 else canvas, cmap="gray" if c == 1 else None, vmin=0, vmax=1)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)
    _save(fig, path)
