"""Data parallelism across the devices of one host or of many: pmap, jit over a mesh, shard_map.

One step function serves every mode; a :class:`DataParallel` plan is the one place that says,
per mode, how a GAN function is mapped and where the state and the batches live:

* ``jit``: one device, plain ``jax.jit`` (what :func:`plan` gives for a single device).
* ``pmap``: the step runs per device with ``GAN.axis_name`` set, so gradients, metrics and
  (``sync_model_state``) batch statistics are ``lax.pmean``-ed over the device axis. The state
  carries a leading device axis ``[n_local, ...]``, and so do the batches.
* ``sharding``: the step runs on the global batch under ``jax.jit`` with the state replicated
  and the batch split over a 1-D mesh (``GAN.batch_sharding``); the compiler inserts the
  reductions. The state is a global array replicated over the mesh.
* ``shard_map``: the per-device step (``axis_name`` set) under ``jax.shard_map`` over the same
  mesh, the path JAX now recommends for per-device code; layouts as for ``sharding``. It runs
  with ``check_vma=False``, as ``jax.pmap`` does: the step averages its gradients itself with
  ``lax.pmean``, whereas under ``check_vma=True`` JAX's autodiff already sums the gradients of
  replicated parameters over devices (it would count them n times).

The free functions (:func:`pmap_step`, :func:`replicate`, :func:`sharded_step`, ...) are
shorthands for a plan's methods. The real data of every mode is drawn by global example index
(:mod:`jaxgan.runner`), so one device with batch B and n devices with B/n each follow the same
trajectory up to float reduction order, and in a multi-process run each process draws exactly
its devices' share.

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

from jaxgan import runner
from jaxgan.configs import ConfigError
from jaxgan.gan import GAN, GANState

Array = jax.Array
PyTree = Any
Device = Any
Step = Callable[..., tuple[GANState, dict[str, Array]]]

AXIS = "data"  # the device axis: pmap's axis_name and the mesh's axis name
MODES = ("pmap", "sharding", "shard_map")
STEPS = ("train_step", "d_step", "g_step")


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


def data_mesh(devices: Sequence[Device] | None = None) -> Mesh:
    """A 1-D data-parallel mesh (axis ``"data"``, Auto so the compiler partitions) over
    ``devices`` (default: every process's devices)."""
    devices = list(devices) if devices is not None else global_devices()
    return Mesh(np.asarray(devices), (AXIS,), axis_types=(AxisType.Auto,))


# ---------------------------------------------------------------------------- layouts of leaves


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _each_leaf(fn: Callable[[Any], Array], tree: PyTree) -> PyTree:
    """``fn`` on every leaf of ``tree``, typed PRNG keys passed as their raw data."""

    def one(x):
        if _is_key(x):
            return jax.random.wrap_key_data(fn(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return fn(x)

    return jax.tree.map(one, tree)


def _host(x: Any) -> np.ndarray:
    return np.asarray(jax.device_get(x))  # via the host: x may be a global array of several processes


def _stacked(x: np.ndarray, devices: Sequence[Device]) -> Array:
    """``x: [n, ...]`` with row ``k`` on ``devices[k]``: the leading device axis pmap maps over."""
    sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
    shards = [jax.device_put(x[k : k + 1], d) for k, d in enumerate(devices)]
    return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)


def _replicas(x: Any, devices: Sequence[Device]) -> Array:
    """One copy of ``x`` per device, stacked: ``[n, ...]``."""
    host = _host(x)
    return _stacked(np.broadcast_to(host[None], (len(devices), *host.shape)), devices)


def _first_copy(x: Any) -> Array:
    """Replica 0 of a stacked ``[n, ...]`` leaf, read from this process's first device (no
    gather of the other replicas) into a fresh buffer, so it survives the donation of ``x``."""
    if not isinstance(x, jax.Array):
        return jnp.asarray(np.asarray(x)[0])
    return jnp.array(x.addressable_shards[0].data[0], copy=True)


def _on_mesh(x: Any, mesh: Mesh) -> Array:
    """A global array replicated over ``mesh`` (each process passes the same host value)."""
    host = _host(x)
    return jax.make_array_from_callback(host.shape, NamedSharding(mesh, P()), lambda idx: host[idx])


def _local_copy(x: Array) -> Array:
    """A replicated global array as a fresh single-device array on this process's first device."""
    return jnp.array(x.addressable_shards[0].data, copy=True)


def _batch_spec(batch_axis: int) -> P:
    return P(*([None] * batch_axis), AXIS)


# ---------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How a run spreads over devices: ``mode`` (``jit`` on one device, ``pmap``, ``sharding``
    or ``shard_map``) and the devices in use. The one place that knows the modes: it binds a
    :class:`GAN` to the mode (:meth:`bind`), maps a function of ``(state, *batches)`` over the
    devices (:meth:`map`; :meth:`step`, :meth:`train_chunk`, :meth:`train_chunk_fed` use it),
    and lays the state (:meth:`place` / :meth:`unplace`) and batches (:meth:`put_batch`) out.
    Checkpoints always hold the unreplicated state, so a run resumes on any device count."""

    mode: str
    local: tuple[Device, ...]  # this process's devices in use
    devices: tuple[Device, ...]  # every process's devices in use, process by process
    given_mesh: Mesh | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        if self.mode not in ("jit", *MODES):
            raise ParallelError(f"mode={self.mode!r}: choose jit or one of {', '.join(MODES)}")

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @functools.cached_property
    def mesh(self) -> Mesh:
        """The 1-D mesh over :attr:`devices` (the one given, if any)."""
        return self.given_mesh if self.given_mesh is not None else data_mesh(self.devices)

    @property
    def per_device(self) -> bool:
        """Whether the mapped function runs once per device on its share (``pmap``,
        ``shard_map``) rather than once on the global batch (``jit``, ``sharding``)."""
        return self.mode in ("pmap", "shard_map")

    @property
    def sync_axis(self) -> str | None:
        """The axis per-device networks reduce batch statistics over (sync batch norm): the
        device axis under ``pmap``/``shard_map``; None when the step sees the global batch."""
        return AXIS if self.per_device else None

    def local_batch(self, global_batch: int) -> int:
        """Each device's share of ``global_batch`` (refuses a batch that does not divide)."""
        return split_batch(global_batch, self.num_devices)

    def step_batch(self, global_batch: int) -> int:
        """The batch one call of a mapped function sees: each device's share when it runs per
        device, else the global batch."""
        local = self.local_batch(global_batch)
        return local if self.per_device else global_batch

    def describe(self) -> str:
        platform = self.local[0].platform
        hosts = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
        how = "plain jit" if self.mode == "jit" else self.mode
        return f"using {self.num_devices} {platform} device(s){hosts} ({how})"

    # ------------------------------------------------------------------ functions

    def bind(self, gan: GAN) -> GAN:
        """``gan`` as this mode runs it: ``axis_name`` set per device, ``batch_sharding`` set
        under ``sharding``, unchanged on one device."""
        if self.mode == "jit":
            return gan
        if self.mode == "sharding":
            return dataclasses.replace(gan, axis_name=None, batch_sharding=NamedSharding(self.mesh, P(AXIS)))
        return dataclasses.replace(gan, axis_name=AXIS, batch_sharding=None)

    def map(self, fn: Step, batch_axes: Sequence[int] = (), *, donate: bool = True) -> Step:
        """``fn: (state, *batches) -> (state, metrics)``, written for a :meth:`bind`-ed GAN and
        :meth:`step_batch` examples, compiled for this mode. ``batch_axes[i]`` is the axis of
        batch ``i`` that holds the examples (split over the devices). Call it with a
        :meth:`place`-d state and :meth:`put_batch`-ed batches; it returns the new state in the
        same layout and the metrics, replicated (no device axis). Donates the state unless
        ``donate=False``."""
        donated = (0,) if donate else ()
        if self.mode == "jit":
            return jax.jit(fn, donate_argnums=donated)
        if self.mode == "pmap":
            return jax.pmap(fn, axis_name=AXIS, out_axes=(0, None), devices=self.devices, donate_argnums=donated)
        specs = tuple(_batch_spec(a) for a in batch_axes)
        if self.mode == "sharding":
            rep = NamedSharding(self.mesh, P())
            return jax.jit(fn, in_shardings=(rep, *(NamedSharding(self.mesh, s) for s in specs)),
                           out_shardings=(rep, rep), donate_argnums=donated)
        mapped = jax.shard_map(fn, mesh=self.mesh, in_specs=(P(), *specs), out_specs=(P(), P()), check_vma=False)
        return jax.jit(mapped, donate_argnums=donated)

    def step(self, gan: GAN, method: str = "train_step", *, batch_axis: int = 0, donate: bool = True) -> Step:
        """``gan.<method>`` (``train_step``, ``d_step`` or ``g_step``) in this mode: ``(state,
        batch) -> (state, metrics)``, the batch's examples along ``batch_axis`` (1 for stacked
        ``[d_steps, B, ...]`` batches)."""
        if method not in STEPS:
            raise ValueError(f"method={method!r}: choose {', '.join(STEPS)}")
        return self.map(getattr(self.bind(gan), method), (batch_axis,), donate=donate)

    def train_chunk(self, gan: GAN, source, global_batch: int, rounds: int, *, donate: bool = True,
                    **chunk_kwargs) -> Step:
        """``state -> (state, metrics [rounds])``: :func:`jaxgan.runner.train_chunk` (the data
        drawn on each device; ``chunk_kwargs`` go to it) in this mode."""
        fn = functools.partial(runner.train_chunk, self.bind(gan), source, local_batch=self.step_batch(global_batch),
                               rounds=rounds, **chunk_kwargs)
        return self.map(fn, donate=donate)

    def train_chunk_fed(self, gan: GAN, transform: Callable | None, global_batch: int, *, donate: bool = True,
                        **chunk_kwargs) -> Step:
        """``(state, batches) -> (state, metrics [rounds])`` over host-fed batches laid out by
        :meth:`put_fed`: :func:`jaxgan.runner.train_chunk_fed` (``chunk_kwargs`` go to it) in
        this mode."""
        self.local_batch(global_batch)
        fn = functools.partial(runner.train_chunk_fed, self.bind(gan), transform=transform, **chunk_kwargs)
        return self.map(fn, (2,), donate=donate)

    # ------------------------------------------------------------------ layouts

    def place(self, state: PyTree) -> PyTree:
        """An unreplicated state (or any pytree) in this mode's layout: on the device (``jit``),
        one copy per local device on a leading axis (``pmap``), or replicated over the mesh."""
        if self.mode == "jit":
            return jax.device_put(state, self.local[0])
        if self.mode == "pmap":
            return _each_leaf(lambda x: _replicas(x, self.local), state)
        return _each_leaf(lambda x: _on_mesh(x, self.mesh), state)

    def unplace(self, state: PyTree) -> PyTree:
        """A single-device copy of the state on this process (safe to keep across donation)."""
        if self.mode == "jit":
            return jax.tree.map(lambda x: jnp.array(x, copy=True), state)
        if self.mode == "pmap":
            return _each_leaf(_first_copy, state)
        return _each_leaf(_local_copy, state)

    def put_batch(self, batch: Any, batch_axis: int = 0) -> Array:
        """This process's examples (along ``batch_axis``) in this mode's layout: under ``pmap``
        with a leading device axis, device ``k`` holding this process's examples ``k*b/n ..
        (k+1)*b/n - 1`` (as :meth:`GAN.example_ids` numbers them); under ``sharding`` and
        ``shard_map`` this process's part of one global array split over the mesh."""
        x = _host(batch)
        if self.mode == "jit":
            return jax.device_put(x, self.local[0])
        n = len(self.local)
        per = split_batch(x.shape[batch_axis], n)
        if self.mode == "pmap":
            split = x.reshape(*x.shape[:batch_axis], n, per, *x.shape[batch_axis + 1 :])
            return _stacked(np.moveaxis(split, batch_axis, 0), self.local)
        return jax.make_array_from_process_local_data(NamedSharding(self.mesh, _batch_spec(batch_axis)), x)

    def put_fed(self, batches: np.ndarray) -> Array:
        """This process's host-fed batches ``[rounds, d_steps, B_host, ...]`` laid out for
        :meth:`train_chunk_fed` (:meth:`put_batch` along axis 2)."""
        return self.put_batch(batches, batch_axis=2)

    def for_checkpoint(self, state: PyTree) -> PyTree:
        """An :meth:`unplace`-d state as orbax saves it: unchanged with one process; with several,
        one global array replicated over every device in use (orbax then writes it once)."""
        return _each_leaf(lambda x: _on_mesh(x, self.mesh), state) if jax.process_count() > 1 else state

    def restore_target(self, state: PyTree) -> PyTree:
        """An unreplicated state laid out as :meth:`for_checkpoint` saves it (restore into it)."""
        return self.for_checkpoint(state)


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


def pmap_plan(devices: Sequence[Device] | None = None) -> DataParallel:
    """A ``pmap`` plan over ``devices`` of this process (default: all of them), even for one
    device; with several processes, the same count on every process."""
    local = tuple(devices) if devices is not None else tuple(jax.local_devices())
    every = local if jax.process_count() == 1 else tuple(global_devices(len(local)))
    return DataParallel("pmap", local, every)


def mesh_plan(mesh: Mesh, mode: str = "sharding") -> DataParallel:
    """A ``sharding`` or ``shard_map`` plan over ``mesh`` (a 1-D mesh with the axis ``"data"``,
    e.g. :func:`data_mesh`)."""
    if mode not in ("sharding", "shard_map"):
        raise ParallelError(f"mode={mode!r}: a mesh runs sharding or shard_map")
    if tuple(mesh.axis_names) != (AXIS,):
        raise ParallelError(f"mesh axes {tuple(mesh.axis_names)}: use a 1-D mesh with the axis {AXIS!r} "
                            "(jaxgan.parallel.data_mesh)")
    every = tuple(mesh.devices.flat)
    local = tuple(d for d in every if d.process_index == jax.process_index())
    return DataParallel(mode, local, every, mesh)


# ---------------------------------------------------------------------------- shorthands


def replicate(tree: PyTree, devices: Sequence[Device] | None = None) -> PyTree:
    """One copy of every leaf per device on a leading axis ``[n, ...]`` (pmap's layout;
    ``devices`` default to all of this process's): :meth:`DataParallel.place` under pmap."""
    return pmap_plan(devices).place(tree)


def unreplicate(tree: PyTree) -> PyTree:
    """The first replica of a :func:`replicate`-d (or pmap-output) tree: ``[n, ...] -> [...]``."""
    return _each_leaf(_first_copy, tree)


def shard_batch(batch: Array, devices: Sequence[Device] | None = None) -> Array:
    """``batch: [B, ...]`` (this process's examples) -> ``[n, B/n, ...]`` on ``devices``:
    :meth:`DataParallel.put_batch` under pmap."""
    return pmap_plan(devices).put_batch(batch)


def pmap_step(gan: GAN, method: str = "train_step", devices: Sequence[Device] | None = None, *,
              donate: bool = True) -> Step:
    """``gan.<method>`` pmapped over ``devices``: :meth:`DataParallel.step` under pmap. Call it
    with a :func:`replicate`-d state and a :func:`shard_batch`-ed batch."""
    return pmap_plan(devices).step(gan, method, donate=donate)


def replicate_on(tree: PyTree, mesh: Mesh) -> PyTree:
    """Every leaf as a global array replicated over ``mesh`` (each process passes the same
    host value): :meth:`DataParallel.place` on a mesh."""
    return mesh_plan(mesh).place(tree)


def shard_global_batch(local_batch: Array, mesh: Mesh, batch_axis: int = 0) -> Array:
    """This process's examples as its part of a global batch split over ``mesh`` along
    ``batch_axis``: :meth:`DataParallel.put_batch` on a mesh."""
    return mesh_plan(mesh).put_batch(local_batch, batch_axis)


def sharded_step(gan: GAN, mesh: Mesh, method: str = "train_step", *, batch_axis: int = 0,
                 donate: bool = True) -> Step:
    """``gan.<method>`` under ``jax.jit`` over ``mesh``, state replicated and batch split:
    :meth:`DataParallel.step` under sharding (inputs from :func:`replicate_on` and
    :func:`shard_global_batch`)."""
    return mesh_plan(mesh, "sharding").step(gan, method, batch_axis=batch_axis, donate=donate)


def shard_map_step(gan: GAN, mesh: Mesh, method: str = "train_step", *, batch_axis: int = 0,
                   donate: bool = True) -> Step:
    """The per-device ``gan.<method>`` under ``jax.shard_map`` over ``mesh``:
    :meth:`DataParallel.step` under shard_map (inputs as for :func:`sharded_step`)."""
    return mesh_plan(mesh, "shard_map").step(gan, method, batch_axis=batch_axis, donate=donate)


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
