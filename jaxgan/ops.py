"""Operations with one definition whose lowering a platform plug-in may replace.

An :class:`Op` is a JAX primitive computed by a plain JAX function, ``impl``, on every platform:
its lowering is ``impl``'s own, inlined, so the program is the one ``impl`` alone would give. A
plug-in (:func:`jaxgan.cpu.tune`) registers another lowering for one platform, the way JAX
lowers its own primitives per platform; the core calls the op and never asks where it runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from jax.core import ShapedArray
from jax.extend.core import Primitive
from jax.interpreters import batching, mlir

Array = jax.Array
LoweringRule = Callable[..., object]


def _mapped(fn: Callable[..., Array], batch_ndim: int, params: dict) -> Callable[..., Array]:
    """``fn(*args, **params)`` mapped over the ``batch_ndim`` leading axes of every argument."""
    out = functools.partial(fn, **params)
    for _ in range(batch_ndim):
        out = jax.vmap(out)
    return out


class Op:
    """``impl(*arrays, **static) -> array`` as one primitive (see the module docstring).

    Under ``vmap`` the batched axes move to the front of every argument and the op maps its
    computation over them, so a platform's lowering sees every batch in one call (its rule
    receives ``batch_ndim``, the number of leading batch axes, with the static parameters). It
    has no differentiation rule: the ops here take integers (keys and ids)."""

    def __init__(self, name: str, impl: Callable[..., Array]):
        self.impl = impl
        self.primitive = Primitive(name)
        self.primitive.def_impl(self._eager)
        self.primitive.def_abstract_eval(self._abstract_eval)
        self.default_lowering = mlir.lower_fun(
            lambda *args, batch_ndim, **params: _mapped(impl, batch_ndim, params)(*args), multiple_results=False)
        mlir.register_lowering(self.primitive, self.default_lowering)
        batching.primitive_batchers[self.primitive] = self._batch

    def __call__(self, *args: Array, **params) -> Array:
        return self.primitive.bind(*args, batch_ndim=0, **params)

    def lower_on(self, platform: str, rule: LoweringRule | None = None) -> None:
        """Lower the op with ``rule`` on ``platform`` from now on (``None``: with ``impl`` again).
        Functions traced before keep the lowering they had (jit caches it with the trace)."""
        mlir.register_lowering(self.primitive, rule or self.default_lowering, platform=platform)

    def _abstract_eval(self, *avals, batch_ndim: int, **params):
        args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in avals]
        out = jax.eval_shape(_mapped(self.impl, batch_ndim, params), *args)
        return ShapedArray(out.shape, out.dtype)

    def _eager(self, *args, **params):
        # Compiled afresh, with the lowering registered now (not cached with an earlier one).
        return jax.jit(functools.partial(self.primitive.bind, **params))(*args)

    def _batch(self, args, dims, *, batch_ndim: int, **params):
        size = next(a.shape[d] for a, d in zip(args, dims, strict=True) if d is not None)
        front = [batching.bdim_at_front(a, d, size) for a, d in zip(args, dims, strict=True)]
        return self.primitive.bind(*front, batch_ndim=batch_ndim + 1, **params), 0
