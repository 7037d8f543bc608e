"""Host-fed real data: batches made on the host, keyed by position, prefetched to the device.

Samplers that run inside jit (toy mixtures, arrays in device memory) need none of this. Data
that lives on the host (a TFDS image dataset) is fed to a compiled chunk of rounds as one array
``[rounds, d_steps, B, ...]``, made by a :class:`HostSource`:

* **The batch is a pure function of (seed, round).** The global batch of round ``t`` holds the
  examples at stream positions ``p = (t * d_steps + j) * B + i`` (D update ``j``, slot ``i``).
  Position ``p`` lies in epoch ``e = p // N``, at offset ``p % N`` of that epoch's permutation
  of the N examples, a permutation drawn from ``(seed, e)`` alone. So each epoch visits every
  example once in a fresh order (shuffling without replacement, repeating forever), and a
  resumed run needs nothing but its step: the stream position *is* ``step`` (the
  checkpoint's step restores it exactly, at any host or device count).
* **Per-host sharding by slot.** Host ``h`` of ``H`` makes slots ``[h B/H, (h+1) B/H)`` of every
  global batch (devices then split a host's slice in order, as ``GAN.example_ids`` numbers
  them), so the global batch does not depend on the number of hosts or devices.
* **Storage dtype on the wire.** Images travel as uint8 and become float32 in [-1, 1] inside
  the compiled chunk (:meth:`HostSource.device_transform`): four times less to copy.

Permutations come from numpy's Philox counter-based generator (``random_raw``, a fixed
algorithm) ranked by a stable sort, so they do not change across numpy versions.
"""

from __future__ import annotations

import concurrent.futures
import threading
import warnings
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


@runtime_checkable
class HostSource(Protocol):
    """Real data made on the host. ``example_shape`` is the shape of one example as the GAN
    sees it; ``storage_shape``/``dtype`` of one example as it travels."""

    example_shape: tuple[int, ...]

    def host_batches(self, first_round: int, rounds: int, d_steps: int, global_batch: int) -> np.ndarray:
        """This host's examples of rounds ``[first_round, first_round + rounds)``:
        ``[rounds, d_steps, global_batch / process_count, ...]`` in the storage dtype."""
        ...

    def device_transform(self, x: Array) -> Array:
        """Storage dtype -> the float32 examples the GAN trains on (pure; runs inside jit)."""
        ...

    def describe(self) -> dict[str, Any]:
        """What identifies this stream (dataset, split, size, count, seed): saved with a
        checkpoint and compared on resume."""
        ...


def pixels_to_unit_range(x: Array) -> Array:
    """uint8 pixels [0, 255] -> float32 [-1, 1] (the range of the generator's tanh); 0 and 255
    map to -1 and 1 exactly (a division by 127.5, not a multiplication by its rounded inverse)."""
    return (x.astype(jnp.float32) - 127.5) / 127.5


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """A permutation of ``range(n)`` that depends only on ``(seed, epoch)``."""
    key = np.array([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch) & 0xFFFFFFFFFFFFFFFF], np.uint64)
    draws = np.random.Philox(key=key).random_raw(n)
    return np.argsort(draws, kind="stable").astype(np.int64)


def stream_positions(first_round: int, rounds: int, d_steps: int, global_batch: int,
                     process_index: int = 0, process_count: int = 1) -> np.ndarray:
    """Stream positions ``[rounds, d_steps, global_batch / process_count]`` of this host's slots."""
    if global_batch % process_count:
        raise ValueError(
            f"batch_size={global_batch} does not split over {process_count} hosts: use a multiple of {process_count}"
        )
    per_host = global_batch // process_count
    t = np.arange(first_round, first_round + rounds, dtype=np.int64)[:, None, None]
    j = np.arange(d_steps, dtype=np.int64)[None, :, None]
    i = np.arange(per_host, dtype=np.int64)[None, None, :] + process_index * per_host
    return (t * d_steps + j) * global_batch + i


class _Permutations:
    """The epoch permutations a run is reading (a small cache: consecutive chunks reuse them)."""

    def __init__(self, seed: int, n: int, keep: int = 3):
        self.seed, self.n, self.keep = int(seed), int(n), keep
        self._cache: dict[int, np.ndarray] = {}

    def __call__(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(min(self._cache))
            self._cache[epoch] = epoch_permutation(self.seed, epoch, self.n)
        return self._cache[epoch]

    def indices(self, positions: np.ndarray) -> np.ndarray:
        """Example indices at stream ``positions`` (any shape)."""
        flat = positions.reshape(-1)
        epochs, offsets = np.divmod(flat, self.n)
        out = np.empty_like(flat)
        for e in np.unique(epochs):
            sel = epochs == e
            out[sel] = self(int(e))[offsets[sel]]
        return out.reshape(positions.shape)


class IndexedImages:
    """A :class:`HostSource` over images ``[N, H, W, C]`` uint8 held on the host (in memory or
    a memory-mapped file), read by position as the module docstring describes."""

    def __init__(self, images: np.ndarray, *, seed: int, name: str = "images",
                 process_index: int | None = None, process_count: int | None = None,
                 info: dict[str, Any] | None = None):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"IndexedImages needs uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
        if images.shape[0] < 1:
            raise ValueError(f"{name} has no examples")
        self.images = images
        self.name = name
        self.seed = int(seed)
        self.example_shape = tuple(int(s) for s in images.shape[1:])
        self.process_index = jax.process_index() if process_index is None else int(process_index)
        self.process_count = jax.process_count() if process_count is None else int(process_count)
        self.info = dict(info or {})
        self._perms = _Permutations(self.seed, images.shape[0])
        self._lock = threading.Lock()

    @property
    def num_examples(self) -> int:
        return int(self.images.shape[0])

    def indices(self, first_round: int, rounds: int, d_steps: int, global_batch: int) -> np.ndarray:
        """Example indices ``[rounds, d_steps, global_batch / process_count]`` of this host."""
        pos = stream_positions(first_round, rounds, d_steps, global_batch, self.process_index, self.process_count)
        with self._lock:
            return self._perms.indices(pos)

    def host_batches(self, first_round: int, rounds: int, d_steps: int, global_batch: int) -> np.ndarray:
        idx = self.indices(first_round, rounds, d_steps, global_batch)
        flat = idx.reshape(-1)
        order = np.argsort(flat, kind="stable")  # read a memory-mapped file in increasing order
        gathered = np.empty((flat.size, *self.example_shape), np.uint8)
        gathered[order] = self.images[flat[order]]
        return gathered.reshape(*idx.shape, *self.example_shape)

    def device_transform(self, x: Array) -> Array:
        return pixels_to_unit_range(x)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "num_examples": self.num_examples, "seed": self.seed,
                "example_shape": list(self.example_shape), **self.info}

    def position(self) -> dict[str, Any]:
        """What a checkpoint stores for this stream (:mod:`jaxgan.loop`): its identity. The
        position itself is the checkpoint's step (batches are a function of (seed, round))."""
        return self.describe()

    def restore_position(self, saved: dict[str, Any]) -> None:
        """Resume from a checkpoint's :meth:`position`: nothing to move; warn when the stream
        is not the one the checkpoint was reading (other dataset, size, count or seed)."""
        now = self.describe()
        changed = sorted(k for k in saved if k != "data_dir" and saved.get(k) != now.get(k))
        if changed:
            warnings.warn(
                f"the dataset differs from the checkpoint's ({', '.join(changed)}): training resumes, "
                "but not on the batches the interrupted run would have seen", stacklevel=2,
            )


class Prefetcher:
    """Makes host batches ahead of the loop on a background thread and puts them on the device
    (``put``), so the host pipeline overlaps compute.

    :meth:`get` ``(first_round, rounds)`` returns that chunk's batches (made now if it was not
    the one predicted) and starts making the next one, predicted to have the same length (cut at
    ``total``). Any chunk schedule is served correctly; a wrong prediction only costs one chunk
    made without overlap. Errors on the thread are raised by :meth:`get`.
    """

    def __init__(self, source: HostSource, *, d_steps: int, global_batch: int, total: int | None = None,
                 put: Callable[[np.ndarray], Any] = jax.device_put):
        self._source, self._d_steps, self._batch = source, d_steps, global_batch
        self._total, self._put = total, put
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxgan-prefetch")
        self._pending: tuple[tuple[int, int], concurrent.futures.Future] | None = None
        self.misses = 0

    def _make(self, first: int, rounds: int):
        return self._put(self._source.host_batches(first, rounds, self._d_steps, self._batch))

    def get(self, first_round: int, rounds: int):
        """Batches ``[rounds, d_steps, B_host, ...]`` of rounds ``[first_round, first_round + rounds)``."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] == (first_round, rounds):
            batches = pending[1].result()
        else:
            if pending is not None:
                pending[1].cancel()
                self.misses += 1
            batches = self._make(first_round, rounds)
        nxt = first_round + rounds
        n = rounds if self._total is None else min(rounds, self._total - nxt)
        if n > 0:
            self._pending = ((nxt, n), self._pool.submit(self._make, nxt, n))
        return batches

    def close(self) -> None:
        if self._pending is not None:
            self._pending[1].cancel()
            self._pending = None
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def check_first_batch(source: HostSource, first_round: int, d_steps: int, global_batch: int) -> None:
    """Validate the first batch a run will train on (dtype, shape, channels, finiteness, and a
    warning if not in [-1, 1]) on the host, before anything is compiled."""
    from jaxgan.data.checks import check_batch

    raw = source.host_batches(first_round, 1, d_steps, global_batch)[0]
    batch = np.asarray(jax.jit(source.device_transform)(raw))
    name = getattr(source, "name", type(source).__name__)
    check_batch(batch, tuple(source.example_shape), what=f"the first batch of {name}", value_range=(-1.0, 1.0))
