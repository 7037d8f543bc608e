"""Data parallelism across the devices of one host or of many: pmap, jit over a mesh, shard_map.

One step function serves every mode (DESIGN.md, "Multi-device and multi-host"); what changes
is how it is mapped and where the state lives:

* ``pmap``: the step runs per device with ``GAN.axis_name`` set, so gradients, metrics and
  (``sync_model_state``) batch statistics are ``lax.pmean``-ed over the device axis. The state
  carries a leading device axis ``[n_local, ...]`` (:func:`replicate` / :func:`unreplicate`).
* ``sharding``: the step runs on the global batch under ``jax.jit`` with the state replicated
  and the batch split over a 1-D mesh (``GAN.batch_sharding``); the compiler inserts the
  reductions. The state is a global array replicated over the mesh (:func:`replicate_on`).
* ``shard_map``: the per-device step (``axis_name`` set) under ``jax.shard_map`` over the same
  mesh, the path JAX now recommends for per-device code; the state is laid out as for
  ``sharding``. It runs with ``check_vma=False``, as ``jax.pmap`` does: the step averages its
  gradients itself with ``lax.pmean``, whereas under ``check_vma=True`` JAX's autodiff already
  sums the gradients of replicated parameters over devices (it would count them n times).

The real data of every mode is drawn by global example index (:mod:`jaxgan.runner`), so one
device with batch B and n devices with B/n each follow the same trajectory up to float
reduction order, and in a multi-process run each process draws exactly its devices' share.

Multi-host: :func:`initialize_distributed` starts JAX's own distributed runtime
(``jax.distributed.initialize``) from arguments or environment variables; afterwards the same
modes span every process's devices.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgan.configs import ConfigError
from jaxgan.gan import GAN, GANState
from jaxgan.runner import train_chunk, train_chunk_fed

Array = jax.Array
PyTree = Any
Device = Any

AXIS = "data"  # the device axis: pmap's axis_name and the mesh's axis name
MODES = ("pmap", "sharding", "shard_map")


class ParallelError(ConfigError):
    """A device or batch layout that cannot run; the message names the problem and the fix."""


# ---------------------------------------------------------------------------- devices, batches


def select_devices(n: int = 0) -> list[Device]:
    """The first ``n`` of this process's devices (``n = 0``: all of them)."""
    local = jax.local_devices()
    if n < 0:
        raise ParallelError(f"devices={n}: use a count >= 1, or 0 for all {len(local)} local devices")
    if n > len(local):
        raise ParallelError(
            f"devices={n} but this process sees {len(local)} {local[0].platform} device(s): use "
            f"devices={len(local)} or fewer (on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N "
            "simulates N devices)"
        )
    return local[: n or len(local)]


def global_devices(n_local: int = 0) -> list[Device]:
    """The first ``n_local`` devices of every process, process by process (the order pmap uses,
    so global example indices are contiguous per process). One process: :func:`select_devices`."""
    count = len(select_devices(n_local))
    return [d for p in range(jax.process_count()) for d in jax.local_devices(process_index=p)[:count]]


def split_batch(global_batch: int, num_devices: int) -> int:
    """The per-device batch ``global_batch / num_devices``; refuses a batch that does not divide."""
    if num_devices < 1:
        raise ParallelError(f"need at least one device, got {num_devices}")
    if global_batch % num_devices:
        lower = global_batch - global_batch % num_devices
        raise ParallelError(
            f"batch_size={global_batch} does not divide over {num_devices} devices: use a multiple of "
            f"{num_devices} (e.g. batch_size={lower or num_devices} or {lower + num_devices}) or "
            f"devices=N with N dividing {global_batch}"
        )
    return global_batch // num_devices


# ---------------------------------------------------------------------------- pmap layout


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _map_keys(fn: Callable[[Array], Array], x: Any) -> Any:
    """Apply an array placement ``fn`` to ``x``, passing typed PRNG keys as their raw data."""
    if _is_key(x):
        return jax.random.wrap_key_data(fn(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    return fn(x)


def _stack_on(devices: Sequence[Device], x: Any) -> Array:
    x = np.asarray(jax.device_get(x))  # via the host: x may be a global array of several processes
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
    shards = [jax.device_put(x[None], d) for d in devices]
    return jax.make_array_from_single_device_arrays((len(devices), *np.shape(x)), sharding, shards)


def replicate(tree: PyTree, devices: Sequence[Device] | None = None) -> PyTree:
    """One copy of every leaf per device, stacked on a leading device axis ``[n, ...]`` (the
    layout ``jax.pmap`` maps over). ``devices`` default to all of this process's devices."""
    devices = list(devices) if devices is not None else jax.local_devices()
    return jax.tree.map(lambda x: _map_keys(functools.partial(_stack_on, devices), x), tree)


def _first_copy(x: Any) -> Array:
    """Replica 0 of a stacked ``[n, ...]`` leaf, read from this process's first device (no
    gather of the other replicas) into a fresh buffer, so it survives the donation of ``x``."""
    if not isinstance(x, jax.Array):
        return jnp.asarray(np.asarray(x)[0])
    return jnp.array(x.addressable_shards[0].data[0], copy=True)


def unreplicate(tree: PyTree) -> PyTree:
    """The first replica of a :func:`replicate`-d (or pmap-output) tree: leaves ``[n, ...] -> [...]``."""
    return jax.tree.map(lambda x: _map_keys(_first_copy, x), tree)


def shard_batch(batch: Array, devices: Sequence[Device] | None = None) -> Array:
    """``batch: [B, ...]`` (this process's examples) -> ``[n, B/n, ...]`` on ``devices`` (default:
    all local devices), device ``k`` holding examples ``k*B/n .. (k+1)*B/n - 1``."""
    devices = list(devices) if devices is not None else jax.local_devices()
    n = len(devices)
    per = split_batch(batch.shape[0], n)
    x = np.asarray(jax.device_get(batch)).reshape(n, per, *batch.shape[1:])
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
    shards = [jax.device_put(x[k : k + 1], d) for k, d in enumerate(devices)]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)


def with_axis(gan: GAN, axis_name: str = AXIS) -> GAN:
    """``gan`` set up to run per device (pmap / shard_map) over ``axis_name``."""
    return dataclasses.replace(gan, axis_name=axis_name, batch_sharding=None)


def _global_pmap_devices(devices: Sequence[Device] | None) -> tuple[Device, ...]:
    local = list(devices) if devices is not None else jax.local_devices()
    if jax.process_count() == 1:
        return tuple(local)
    return tuple(global_devices(len(local)))


def pmap_step(
    gan: GAN, method: str = "train_step", devices: Sequence[Device] | None = None, *, donate: bool = True
) -> Callable[[GANState, Array], tuple[GANState, dict[str, Array]]]:
    """``gan.<method>`` (``train_step``, ``d_step`` or ``g_step``) pmapped over ``devices``.

    Call it with a :func:`replicate`-d state and a :func:`shard_batch`-ed batch ``[n, B/n, ...]``
    (or ``[n, d_steps, B/n, ...]``); it returns the replicated new state and the metrics,
    averaged over devices, without a device axis. The state's buffers are donated.
    """
    if method not in ("train_step", "d_step", "g_step"):
        raise ValueError(f"method={method!r}: choose train_step, d_step or g_step")
    mapped = with_axis(gan)
    return jax.pmap(
        getattr(mapped, method), axis_name=AXIS, out_axes=(0, None),
        devices=_global_pmap_devices(devices), donate_argnums=(0,) if donate else (),
    )


def pmap_train_chunk(
    gan: GAN, source, global_batch: int, rounds: int, devices: Sequence[Device] | None = None,
    *, donate: bool = True,
) -> Callable[[GANState], tuple[GANState, dict[str, Array]]]:
    """``rounds`` training rounds per call with the real data drawn on each device
    (:func:`jaxgan.runner.train_chunk`), pmapped: replicated state -> (state, metrics
    ``[rounds]``). ``global_batch`` is split over every process's devices."""
    pmap_devices = _global_pmap_devices(devices)
    local_batch = split_batch(global_batch, len(pmap_devices))
    fn = functools.partial(train_chunk, with_axis(gan), source, local_batch=local_batch, rounds=rounds)
    return jax.pmap(fn, axis_name=AXIS, out_axes=(0, None), devices=pmap_devices,
                    donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------- mesh layout


def data_mesh(devices: Sequence[Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh (axis ``"data"``, Auto so the compiler partitions) over
    ``devices`` (default: every process's devices)."""
    devices = list(devices) if devices is not None else global_devices()
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


def replicate_on(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf as a global array replicated over ``mesh`` (works across processes: each one
    passes the same host value)."""
    sharding = NamedSharding(mesh, P())

    def put(x):
        host = np.asarray(jax.device_get(x))
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(lambda x: _map_keys(put, x), tree)


def local_copy(tree: PyTree) -> PyTree:
    """A replicated global tree as single-device arrays on this process's first device, as
    fresh buffers (they survive the donation of ``tree``; no cross-process traffic)."""
    return jax.tree.map(
        lambda x: _map_keys(lambda a: jnp.array(a.addressable_shards[0].data, copy=True), x), tree
    )


def shard_global_batch(local_batch: Array, mesh: Mesh, batch_axis: int = 0) -> Array:
    """This process's examples as its part of a global batch split over ``mesh`` along
    ``batch_axis`` (one process: the whole batch)."""
    spec = P(*([None] * batch_axis), AXIS)
    return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(local_batch))


def with_batch_sharding(gan: GAN, mesh: Mesh) -> GAN:
    """``gan`` set up for ``jax.jit`` on the global batch, per-example arrays split over ``mesh``."""
    return dataclasses.replace(gan, axis_name=None, batch_sharding=NamedSharding(mesh, P(AXIS)))


def sharded_step(gan: GAN, mesh: Mesh, method: str = "train_step", *, batch_axis: int = 0, donate: bool = True):
    """``gan.<method>`` under ``jax.jit`` with the state replicated over ``mesh`` and the global
    batch split along ``batch_axis``; pass the state through :func:`replicate_on` and the batch
    through :func:`shard_global_batch`. Returns (state, metrics), both replicated."""
    rep = NamedSharding(mesh, P())
    batch = NamedSharding(mesh, P(*([None] * batch_axis), AXIS))
    return jax.jit(getattr(with_batch_sharding(gan, mesh), method), in_shardings=(rep, batch),
                   out_shardings=(rep, rep), donate_argnums=(0,) if donate else ())


def sharded_train_chunk(gan: GAN, source, global_batch: int, rounds: int, mesh: Mesh, *, donate: bool = True):
    """:func:`pmap_train_chunk` as one ``jax.jit`` program over ``mesh`` (state replicated, the
    drawn data split; the compiler inserts the reductions)."""
    split_batch(global_batch, mesh.size)
    rep = NamedSharding(mesh, P())
    fn = functools.partial(train_chunk, with_batch_sharding(gan, mesh), source, local_batch=global_batch,
                           rounds=rounds)
    return jax.jit(fn, in_shardings=(rep,), out_shardings=(rep, rep), donate_argnums=(0,) if donate else ())


def shard_map_step(gan: GAN, mesh: Mesh, method: str = "train_step", *, batch_axis: int = 0, donate: bool = True):
    """The per-device ``gan.<method>`` (``axis_name`` set) under ``jax.shard_map`` over ``mesh``,
    jitted: the state replicated (``P()``), the global batch split along ``batch_axis``. Inputs
    as for :func:`sharded_step`."""
    spec = P(*([None] * batch_axis), AXIS)
    fn = jax.shard_map(getattr(with_axis(gan), method), mesh=mesh, in_specs=(P(), spec), out_specs=(P(), P()),
                       check_vma=False)
    return jax.jit(fn, donate_argnums=(0,) if donate else ())


def shard_map_train_chunk(gan: GAN, source, global_batch: int, rounds: int, mesh: Mesh, *, donate: bool = True):
    """:func:`pmap_train_chunk` under ``jax.shard_map`` over ``mesh`` (state replicated)."""
    local_batch = split_batch(global_batch, mesh.size)
    fn = functools.partial(train_chunk, with_axis(gan), source, local_batch=local_batch, rounds=rounds)
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=(P(),), out_specs=(P(), P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,) if donate else ())


# ---------------------------------------------------------------------------- the loop's view


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a run spreads over devices: ``mode`` (``jit`` on one device, ``pmap``, ``sharding``
    or ``shard_map``) and the devices in use. Turns the unreplicated state into the mode's
    layout (:meth:`place`) and back (:meth:`unplace`), and makes the compiled chunk of rounds.
    Checkpoints always hold the unreplicated state, so a run resumes on any device count."""

    mode: str
    local: tuple[Device, ...]  # this process's devices in use
    devices: tuple[Device, ...]  # every process's devices in use, process by process

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @functools.cached_property
    def mesh(self) -> Mesh:
        return data_mesh(self.devices)

    def local_batch(self, global_batch: int) -> int:
        return split_batch(global_batch, self.num_devices)

    def describe(self) -> str:
        platform = self.local[0].platform
        hosts = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
        how = "plain jit" if self.mode == "jit" else self.mode
        return f"using {self.num_devices} {platform} device(s){hosts} ({how})"

    def place(self, state: PyTree) -> PyTree:
        if self.mode == "jit":
            return jax.device_put(state, self.local[0])
        if self.mode == "pmap":
            return replicate(state, self.local)
        return replicate_on(state, self.mesh)

    def unplace(self, state: PyTree) -> PyTree:
        """A single-device copy of the state on this process (safe to keep across donation)."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: jnp.array(x, copy=True), state)
        if self.mode == "pmap":
            return unreplicate(state)
        return local_copy(state)

    def for_checkpoint(self, state: PyTree) -> PyTree:
        """An :meth:`unplace`-d state as orbax saves it: unchanged with one process; with several,
        one global array replicated over every device in use (orbax then writes it once)."""
        return replicate_on(state, self.mesh) if jax.process_count() > 1 else state

    def restore_target(self, state: PyTree) -> PyTree:
        """An unreplicated state laid out as :meth:`for_checkpoint` saves it (restore into it)."""
        return replicate_on(state, self.mesh) if jax.process_count() > 1 else state

    @property
    def sync_axis(self) -> str | None:
        """The axis per-device networks reduce batch statistics over (sync batch norm): the
        device axis under ``pmap``/``shard_map``; None when the step sees the global batch."""
        return AXIS if self.mode in ("pmap", "shard_map") else None

    def put_fed(self, batches: np.ndarray) -> Array:
        """This process's host-fed batches ``[rounds, d_steps, B_host, ...]`` in this mode's
        layout: under ``pmap`` a leading device axis ``[n_local, rounds, d_steps, B/n, ...]``
        (device ``k`` holding slots ``k*B/n ..``, as :meth:`GAN.example_ids` numbers them);
        otherwise one array split over the devices along the batch axis (2)."""
        batches = np.asarray(batches)
        if self.mode == "jit":
            return jax.device_put(batches, self.local[0])
        if self.mode == "pmap":
            n = len(self.local)
            rounds, d_steps, b = batches.shape[:3]
            per = split_batch(b, n)
            x = np.moveaxis(batches.reshape(rounds, d_steps, n, per, *batches.shape[3:]), 2, 0)
            sharding = NamedSharding(Mesh(np.asarray(self.local), (AXIS,)), P(AXIS))
            shards = [jax.device_put(x[k : k + 1], d) for k, d in enumerate(self.local)]
            return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)
        return shard_global_batch(batches, self.mesh, batch_axis=2)

    def train_chunk_fed(self, gan: GAN, transform: Callable | None, global_batch: int):
        """A compiled ``(state, batches) -> (state, metrics [rounds])`` over host-fed batches
        laid out by :meth:`put_fed` (:func:`jaxgan.runner.train_chunk_fed`); donates the state."""
        self.local_batch(global_batch)
        if self.mode == "jit":
            return jax.jit(functools.partial(train_chunk_fed, gan, transform=transform), donate_argnums=0)
        if self.mode == "pmap":
            fn = functools.partial(train_chunk_fed, with_axis(gan), transform=transform)
            return jax.pmap(fn, axis_name=AXIS, out_axes=(0, None), devices=_global_pmap_devices(self.local),
                            donate_argnums=(0,))
        spec = P(None, None, AXIS)
        if self.mode == "sharding":
            rep = NamedSharding(self.mesh, P())
            fn = functools.partial(train_chunk_fed, with_batch_sharding(gan, self.mesh), transform=transform)
            return jax.jit(fn, in_shardings=(rep, NamedSharding(self.mesh, spec)), out_shardings=(rep, rep),
                           donate_argnums=0)
        fn = functools.partial(train_chunk_fed, with_axis(gan), transform=transform)
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), spec), out_specs=(P(), P()), check_vma=False)
        return jax.jit(mapped, donate_argnums=0)

    def train_chunk(self, gan: GAN, source, global_batch: int, rounds: int):
        """A compiled ``state -> (state, metrics [rounds])`` in this mode; donates the state."""
        if self.mode == "jit":
            self.local_batch(global_batch)
            fn = functools.partial(train_chunk, gan, source, local_batch=global_batch, rounds=rounds)
            return jax.jit(fn, donate_argnums=0)
        if self.mode == "pmap":
            return pmap_train_chunk(gan, source, global_batch, rounds, self.local)
        if self.mode == "sharding":
            return sharded_train_chunk(gan, source, global_batch, rounds, self.mesh)
        return shard_map_train_chunk(gan, source, global_batch, rounds, self.mesh)


def plan(mode: str = "pmap", devices: int = 0) -> DataParallel:
    """The layout for ``devices`` of this process's devices (0: all) in ``mode``. One device in
    one process is plain ``jax.jit`` whatever the mode."""
    if mode not in MODES:
        raise ParallelError(f"parallel={mode!r}: choose one of {', '.join(MODES)}")
    local = tuple(select_devices(devices))
    every = tuple(global_devices(len(local)))
    if len(every) == 1:
        mode = "jit"
    return DataParallel(mode, local, every)


# ---------------------------------------------------------------------------- multi-host


ENV = {
    "coordinator": "JAXGAN_COORDINATOR",
    "num_processes": "JAXGAN_NUM_PROCESSES",
    "process_id": "JAXGAN_PROCESS_ID",
}


def distributed_settings(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
    environ: dict[str, str] | None = None,
) -> dict[str, Any] | None:
    """The multi-process settings from arguments, else ``JAXGAN_COORDINATOR`` /
    ``JAXGAN_NUM_PROCESSES`` / ``JAXGAN_PROCESS_ID``, else JAX's own ``JAX_COORDINATOR_ADDRESS``
    (with ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``); None when nothing asks for several
    processes. Incomplete or inconsistent settings raise :class:`ParallelError`."""
    env = os.environ if environ is None else environ
    coordinator = coordinator or env.get(ENV["coordinator"]) or env.get("JAX_COORDINATOR_ADDRESS")

    def number(value, name, keys):
        if value is None:
            value = next((env[k] for k in keys if env.get(k)), None)
        if value is None:
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ParallelError(f"{name}={value!r}: must be an integer") from None

    n = number(num_processes, "num_processes", (ENV["num_processes"], "JAX_NUM_PROCESSES"))
    pid = number(process_id, "process_id", (ENV["process_id"], "JAX_PROCESS_ID"))
    if coordinator is None and n is None and pid is None:
        return None
    missing = [name for name, v in (("coordinator", coordinator), ("num_processes", n), ("process_id", pid))
               if v is None]
    if missing:
        raise ParallelError(
            f"multi-process run needs coordinator, num_processes and process_id; missing {', '.join(missing)} "
            f"(pass --{missing[0].replace('_', '-')} or set {ENV[missing[0]]})"
        )
    if ":" not in coordinator or not coordinator.rsplit(":", 1)[1].isdigit():
        raise ParallelError(f"coordinator={coordinator!r}: give HOST:PORT of process 0, e.g. 10.0.0.1:8476")
    if n < 1 or not 0 <= pid < n:
        raise ParallelError(f"process_id={pid} with num_processes={n}: need 0 <= process_id < num_processes")
    return {"coordinator_address": coordinator, "num_processes": n, "process_id": pid}


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
    *, heartbeat_timeout_s: int = 100, initialization_timeout_s: int = 300,
) -> bool:
    """Start JAX's distributed runtime (``jax.distributed.initialize``) when the arguments or the
    environment (:func:`distributed_settings`) ask for several processes; returns whether it did.

    Must run before anything touches a device. A process that dies is noticed by the others
    within about ``heartbeat_timeout_s`` (JAX's coordination service then stops them with an
    error instead of letting them wait forever in a collective). On CPU the cross-process
    collectives are JAX's gloo implementation (its default).
    """
    settings = distributed_settings(coordinator, num_processes, process_id)
    if settings is None or settings["num_processes"] == 1:
        return False
    if jax.distributed.is_initialized():
        return True
    try:
        jax.distributed.initialize(
            **settings, heartbeat_timeout_seconds=heartbeat_timeout_s,
            initialization_timeout=initialization_timeout_s,
        )
    except Exception as err:  # XlaRuntimeError and friends: say what was tried
        raise ParallelError(
            f"process {settings['process_id']} of {settings['num_processes']} could not join the coordinator at "
            f"{settings['coordinator_address']} ({type(err).__name__}: {str(err).splitlines()[0][:300]}): start "
            "every process with the same --coordinator and --num-processes, process 0 first reachable at that "
            "address, and distinct --process-id values"
        ) from err
    return True


def is_main_process() -> bool:
    """Whether this process writes the run's logs, plots and summaries (process 0)."""
    return jax.process_index() == 0


def agree(flag: bool) -> bool:
    """True on every process when ``flag`` is True on any (a no-op with one process)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    flags = multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))
    return bool(np.any(flags))
