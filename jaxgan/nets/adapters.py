"""One calling convention for every kind of network: flax linen, flax nnx, plain functions.

A :class:`Network` is a static pair of pure functions::

    init(key, x: [B, ...]) -> (params, model_state)
    apply(params, model_state, x: [B, ...], *, key, train: bool) -> (y, new_model_state)

``model_state`` holds what is not trained by gradients (batch-norm statistics); ``apply``
returns the new one instead of mutating anything, and the caller decides whether to keep it
(the GAN discards it for the player that is held constant). ``key`` feeds dropout and any other
randomness inside the network. ``latent_dim`` is set on generators.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class Network:
    """A network as two pure functions (see module docstring). Hashable by identity."""

    init: Callable[[Array, Array], tuple[PyTree, PyTree]]
    apply: Callable[..., tuple[Array, PyTree]]
    latent_dim: int | None = None


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def from_linen(
    module: Any,
    *,
    latent_dim: int | None = None,
    train_arg: str | None = "train",
    rng_names: tuple[str, ...] = ("dropout",),
) -> Network:
    """Wrap a ``flax.linen.Module`` whose ``__call__(x, train=...)`` maps a batch to a batch.

    Every variable collection other than ``params`` (e.g. ``batch_stats``) is model state; in
    training mode those collections are applied as mutable and the new values returned. If
    ``__call__`` has no ``train_arg`` parameter, none is passed.
    """
    pass_train = train_arg is not None and _accepts(module.__call__, train_arg)

    def _kwargs(train: bool) -> dict[str, bool]:
        return {train_arg: train} if pass_train else {}

    def _rngs(key: Array) -> dict[str, Array]:
        return {name: jax.random.fold_in(key, i) for i, name in enumerate(rng_names)}

    def init(key: Array, x: Array) -> tuple[PyTree, PyTree]:
        pkey, rkey = jax.random.split(key)
        variables = module.init({"params": pkey, **_rngs(rkey)}, x, **_kwargs(False))
        variables = dict(variables)
        params = variables.pop("params", {})
        return params, variables

    def apply(params, model_state, x, *, key, train):
        variables = {"params": params, **model_state}
        mutable = list(model_state) if (train and model_state) else False
        out = module.apply(variables, x, rngs=_rngs(key), mutable=mutable, **_kwargs(train))
        if mutable:
            y, new_state = out
            return y, dict(new_state)
        return out, model_state

    return Network(init=init, apply=apply, latent_dim=latent_dim)


def from_nnx(model_or_factory: Any, *, latent_dim: int | None = None) -> Network:
    """Wrap a ``flax.nnx.Module``, or a factory ``rngs -> Module`` so that ``init`` honours its key.

    The module's ``Param`` variables are the params; every other variable (batch statistics,
    RNG counters) is model state. Train and eval behaviour come from ``Module.train()`` and
    ``Module.eval()``. The module's own RNG keys are replaced on every call by keys derived
    from ``apply``'s ``key``, so dropout masks follow the GAN's keying, not hidden counters.
    Given a module instance rather than a factory, ``init`` returns that instance's weights
    whatever the key (build with a factory to vmap over seeds).
    """
    from flax import nnx

    if isinstance(model_or_factory, nnx.Module):
        model, factory = model_or_factory, None
    else:
        factory = model_or_factory
        model = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))

    model.train()
    graph_train, _, rng_keys, _ = nnx.split(model, nnx.Param, nnx.RngKey, ...)
    model.eval()
    graph_eval = nnx.split(model, nnx.Param, nnx.RngKey, ...)[0]
    key_leaves, key_tree = jax.tree.flatten(rng_keys)
    n_keys = len(key_leaves)

    def _fresh_keys(key: Array) -> PyTree:
        return jax.tree.unflatten(key_tree, [jax.random.fold_in(key, i) for i in range(n_keys)])

    def init(key: Array, x: Array) -> tuple[PyTree, PyTree]:
        del x  # nnx modules are built with their shapes
        m = factory(nnx.Rngs(key)) if factory is not None else model_or_factory
        _, params, _, rest = nnx.split(m, nnx.Param, nnx.RngKey, ...)
        return params, rest

    def apply(params, model_state, x, *, key, train):
        graph = graph_train if train else graph_eval
        # copy=True: the module's variables must not alias the caller's state, which nnx would
        # otherwise update in place (batch statistics, RNG counters) outside of jit.
        m = nnx.merge(graph, params, _fresh_keys(key), model_state, copy=True)
        y = m(x)
        _, _, _, rest = nnx.split(m, nnx.Param, nnx.RngKey, ...)
        return y, rest

    return Network(init=init, apply=apply, latent_dim=latent_dim)


def from_functions(
    init: Callable[[Array, Array], PyTree],
    apply: Callable[..., Array],
    *,
    latent_dim: int | None = None,
) -> Network:
    """Wrap a plain pair ``init(key, x) -> params`` and ``apply(params, x) -> y``.

    If ``apply`` takes a ``key`` keyword it receives one on every call (for stochastic layers).
    There is no model state.
    """
    wants_key = _accepts(apply, "key")

    def _init(key: Array, x: Array) -> tuple[PyTree, PyTree]:
        return init(key, x), {}

    def _apply(params, model_state, x, *, key, train):
        del train
        y = apply(params, x, key=key) if wants_key else apply(params, x)
        return y, model_state

    return Network(init=_init, apply=_apply, latent_dim=latent_dim)


def count_params(params: PyTree) -> int:
    """Number of scalars in a parameter pytree."""
    return int(sum(jnp.size(leaf) for leaf in jax.tree.leaves(params)))
