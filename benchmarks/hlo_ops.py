"""The size of a preset's training step as a GPU or TPU runs it: operations in the StableHLO of
``GAN.train_step`` (every D and G update of a round, and its metrics), exported with
``jax.export`` for ``cuda`` and ``tpu`` (no GPU or TPU needed).

The GAN is the one ``jaxgan train`` builds for such a backend (:func:`jaxgan.build.gan` with
:func:`jaxgan.build.default_layers`), after :func:`jaxgan.cpu.tune` as the CLI calls it. It
uses only names every version of jaxgan has had, so that ``throughput.py --trees`` can run it
against an older tree. Prints one JSON line per preset; ``throughput.py`` puts the count in its
own lines. Run from the repository root::

    python benchmarks/hlo_ops.py --preset ring8 --preset dcgan32
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp

PLATFORMS = ("cuda", "tpu")
# An operation: "%r = dialect.op", "%r:2 = dialect.op", "dialect.op" or '"dialect.op"(' at a line's start.
_OP = re.compile(r'^\s*(?:%[^=\s]+\s*=\s*)?"?([a-z_]+\.[a-z_.]+)"?[\s(<{]', re.MULTILINE)


def count_ops(mlir: str) -> int:
    """Operations in a StableHLO module's text, the function definitions themselves not counted."""
    return sum(1 for m in _OP.finditer(mlir) if m.group(1) != "func.func")


def exported_train_step(preset: str, platforms=PLATFORMS):
    """``jax.export`` of ``preset``'s ``GAN.train_step`` for ``platforms`` on a ``[d_steps, B, ...]``
    batch, with the GAN built for the first of them."""
    from jaxgan import build, configs

    config = configs.preset(preset)
    shape = tuple(build.data_source(config).example_shape)
    # Trees without the layers choice built one GAN for every backend.
    kwargs = {"layers": build.default_layers(platforms[0])} if hasattr(build, "default_layers") else {}
    gan = build.gan(config, shape, **kwargs)
    example = jax.ShapeDtypeStruct((config.batch_size, *shape), jnp.float32)
    state = jax.eval_shape(gan.init, jax.random.key(config.seed), example)
    batch = jax.ShapeDtypeStruct((config.d_steps, config.batch_size, *shape), jnp.float32)
    return jax.export.export(jax.jit(gan.train_step), platforms=platforms)(state, batch)


def hlo_ops(preset: str, platforms=PLATFORMS) -> int:
    """:func:`count_ops` of :func:`exported_train_step`."""
    return count_ops(exported_train_step(preset, platforms).mlir_module())


def in_tree(tree: str, presets: list[str]) -> dict[str, int]:
    """:func:`hlo_ops` of each preset with the jaxgan of another checkout (a subprocess)."""
    import os

    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    out = subprocess.run([sys.executable, os.path.abspath(__file__), *(a for p in presets for a in ("--preset", p))],
                         cwd=tree, env=env, capture_output=True, text=True, check=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    return {r["preset"]: r["hlo_ops"] for r in rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", action="append", required=True)
    a = p.parse_args(argv)
    from jaxgan import cpu

    cpu.tune(warn=False)  # as the CLI does
    for preset in a.preset:
        print(json.dumps({"benchmark": "hlo_ops", "preset": preset, "platforms": list(PLATFORMS),
                          "hlo_ops": hlo_ops(preset), "jax": jax.__version__}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
