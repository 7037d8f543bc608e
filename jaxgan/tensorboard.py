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


class TensorBoardObserver:
    """Writes a run's TensorBoard event files (an ``Observer``; see :mod:`jaxgan.loop`).

    ``samples``: how many generated samples to picture at each plot/checkpoint step (1000
    points for 2-D data, 64 images otherwise, when None)."""

    def __init__(self, samples: int | None = None):
        self.samples = samples
        self.writer = None
        self._run = None
        self._out = ""
        self._events_offset = 0
        self._sample = None

    def on_start(self, run: Any, out: str, start_step: int) -> None:
        from tensorboardX import SummaryWriter

        from jaxgan import rundir

        self._run, self._out = run, out
        # On resume, TensorBoard drops what an earlier session logged after the checkpoint.
        self.writer = SummaryWriter(os.path.join(out, TB_DIR), purge_step=start_step or None, flush_secs=10)
        path = os.path.join(out, rundir.EVENTS)
        self._events_offset = os.path.getsize(path) if os.path.exists(path) else 0

    def on_metrics(self, step: int, row: dict[str, float]) -> list[dict[str, Any]]:
        for key, value in row.items():
            if isinstance(value, int | float | np.number) and not isinstance(value, bool) and np.isfinite(value):
                self.writer.add_scalar(tag(key), float(value), step)
        self._log_new_events()
        return []

    def _log_new_events(self) -> None:
        """Every event written to ``events.jsonl`` since the last look (any observer's, the loop's)."""
        from jaxgan import rundir

        path = os.path.join(self._out, rundir.EVENTS)
        if not os.path.exists(path):
            return
        with open(path, "rb") as f:
            f.seek(self._events_offset)
            data = f.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for next time
        self._events_offset += len(complete)
        for line in complete.decode("utf-8").splitlines():
            if line.strip():
                event = json.loads(line)
                self.writer.add_text("events", event_text(event), int(event["step"]))

    def on_checkpoint(self, step: int, state: Any) -> dict[str, float]:
        import jax

        from jaxgan import viz

        shape = tuple(self._run.example_shape)
        n = self.samples or (1000 if shape == (2,) else 64)
        if self._sample is None:
            gan = self._run.gan
            self._sample = jax.jit(lambda s, k: gan.sample(s, k, n))
        samples = np.asarray(self._sample(state, jax.random.key(step)))
        if shape == (2,):
            fig = viz.scatter_2d_figure(samples, log_density=getattr(self._run.source, "log_density", None),
                                        centers=getattr(self._run.source, "centers", None), title=f"step {step}")
            self.writer.add_figure("samples", fig, step)
        elif len(shape) == 3 and shape[-1] in (1, 3):
            self.writer.add_image("samples", viz.grid_array(samples), step, dataformats="HWC")
        self._log_new_events()
        self.writer.flush()
        return {}

    def should_stop(self) -> str | None:
        return None

    def postfix(self) -> dict[str, str]:
        return {}

    def on_end(self, step: int, state: Any) -> None:
        self._log_new_events()
        self.writer.close()
