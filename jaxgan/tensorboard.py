"""TensorBoard event files for a run: every logged scalar, diagnosis events, and samples.

Written with tensorboardX into ``<run>/tensorboard`` (``tensorboard --logdir <run>``). Scalars are
grouped by what they measure (``scores/``, ``accuracy/``, ``loss/``, ``grad_norm/``,
``coverage/``, ``diversity/``, ``other/``); diagnosis events become text entries; at each
plot/checkpoint step the generator's samples are logged as a picture (a 2-D scatter over the data's
modes for 2-D data, an image grid for images).
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

import numpy as np

from jaxgan.observers import Boundary, Context, Observer, WriterError

TB_DIR = "tensorboard"

_GROUPS = (
    ("scores", ("generator_score", "discriminator_score", "wasserstein_estimate")),
    ("accuracy", ("d_accuracy_real", "d_accuracy_fake")),
    ("loss", ("d_loss", "g_loss", "d_loss_adversarial")),
    ("grad_norm", ("d_grad_norm", "g_grad_norm")),
    ("coverage", ("modes_captured", "modes_effective", "high_quality_frac")),
    ("diversity", ("diversity",)),
)


def tag(key: str) -> str:
    """The TensorBoard tag of metric ``key``."""
    for group, keys in _GROUPS:
        if key in keys:
            return f"{group}/{key}"
    return f"other/{key}"


def event_text(event: dict[str, Any]) -> str:
    """A diagnosis event as Markdown for TensorBoard's text tab."""
    lines = [f"**{event['kind']}** at step {event['step']}"]
    if event.get("message"):
        lines.append(str(event["message"]))
    if event.get("remedies"):
        lines.append("Try: " + "; ".join(event["remedies"]))
    lines.append(f"evidence: `{json.dumps(event.get('evidence', {}))}`")
    return "\n\n".join(lines)


def read_events(logdir: str) -> list[Any]:
    """Every ``Event`` protocol buffer in the event files of ``logdir``, in file order.

    Event files are TFRecord files: records of (uint64 length, uint32 CRC, data, uint32 CRC).
    Reads them back without TensorBoard or TensorFlow installed (CRCs are not checked)."""
    from tensorboardX.proto import event_pb2

    out = []
    for name in sorted(os.listdir(logdir)):
        if "tfevents" not in name:
            continue
        with open(os.path.join(logdir, name), "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            if pos + 16 + length > len(data):
                break  # a record still being written
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12 : pos + 12 + length])
            out.append(event)
            pos += 16 + length
    return out


def scalars(logdir: str) -> dict[tuple[str, int], float]:
    """``{(tag, step): value}`` of every scalar in ``logdir`` (the last write wins)."""
    return {(v.tag, e.step): v.simple_value for e in read_events(logdir) for v in e.summary.value
            if v.HasField("simple_value")}


class TensorBoardObserver(Observer):
    """Writes a run's TensorBoard event files: every logged row's scalars, every event as text,
    and at plot steps a picture of the boundary's shared samples (drawn by the writer).

    ``samples``: how many generated samples to picture (1000 points for 2-D data, 64 images
    otherwise, when None)."""

    def __init__(self, samples: int | None = None):
        self.samples = samples
        self.writer = None

    def on_start(self, ctx: Context) -> None:
        from tensorboardX import SummaryWriter

        self._ctx = ctx
        shape = tuple(ctx.run.example_shape)
        self._n = self.samples or (1000 if shape == (2,) else 64)
        # On resume, TensorBoard drops what an earlier session logged after the checkpoint.
        self.writer = SummaryWriter(os.path.join(ctx.out, TB_DIR), purge_step=ctx.start or None, flush_secs=10)

    def wants(self, step: int) -> int:
        return self._n if step % self._ctx.run.config.plot_every == 0 else -1

    def on_row(self, step: int, row: dict[str, float], stream: str) -> list[dict[str, Any]]:
        for key, value in row.items():
            if isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value):
                self.writer.add_scalar(tag(key), float(value), step)
        return []

    def on_event(self, event: dict[str, Any]) -> None:
        self.writer.add_text("events", event_text(event), int(event["step"]))

    def on_boundary(self, b: Boundary) -> None:
        if (b.plot or b.final) and b.samples is not None:
            self._ctx.writer.submit("the TensorBoard samples", self._picture, b.samples[: self._n], b.step)

    def _picture(self, samples: np.ndarray, step: int) -> None:
        from jaxgan import viz

        run = self._ctx.run
        shape = tuple(run.example_shape)
        if shape == (2,):
            fig = viz.scatter_2d_figure(samples, log_density=getattr(run.source, "log_density", None),
                                        centers=getattr(run.source, "centers", None), title=f"step {step}")
            self.writer.add_figure("samples", fig, step)
        elif len(shape) == 3 and shape[-1] in (1, 3):
            self.writer.add_image("samples", viz.grid_array(samples), step, dataformats="HWC")
        self.writer.flush()

    def on_end(self, step: int) -> None:
        if self.writer is not None:
            try:
                self._ctx.writer.wait()  # the last pictures first
            except WriterError:
                pass  # the loop reports the writer's failure; still close the event files
            self.writer.close()
            self.writer = None
