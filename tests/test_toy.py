"""Toy distributions: geometry, sampling, per-example keying."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxgan.data import TOY


def test_ring8_has_eight_distinct_modes_on_a_circle_of_radius_two():
    ring = TOY["ring8"]
    assert ring.num_modes == 8 and ring.std == 0.02
    np.testing.assert_allclose(np.linalg.norm(ring.centers, axis=1), 2.0, rtol=1e-6)
    gaps = np.linalg.norm(ring.centers - np.roll(ring.centers, 1, axis=0), axis=1)
    np.testing.assert_allclose(gaps, 2 * 2.0 * np.sin(np.pi / 8), rtol=1e-5)  # evenly spaced


def test_grid25_is_the_five_by_five_grid():
    grid = TOY["grid25"]
    assert grid.num_modes == 25 and grid.std == 0.05
    assert sorted(set(grid.centers[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]


def test_samples_cover_every_mode_evenly_with_the_stated_std():
    for name in ("ring8", "grid25"):
        mix = TOY[name]
        x = np.asarray(mix.sample(jax.random.key(0), 50_000))
        d = np.linalg.norm(x[:, None] - mix.centers[None], axis=-1)
        counts = np.bincount(d.argmin(1), minlength=mix.num_modes)
        expected = 50_000 / mix.num_modes
        assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))
        resid = x - mix.centers[d.argmin(1)]
        np.testing.assert_allclose(resid.std(axis=0), mix.std, rtol=0.03)


def test_an_example_depends_only_on_its_index():
    mix = TOY["ring8"]
    ids = jnp.arange(100, dtype=jnp.uint32)
    whole = mix.sample_ids(jax.random.key(1), ids)
    np.testing.assert_array_equal(mix.sample_ids(jax.random.key(1), ids[37:]), whole[37:])


def test_log_density_integrates_to_one():
    mix = TOY["gaussian2d"]
    g = np.linspace(-2, 4, 301)
    xx, yy = np.meshgrid(g, g)
    dens = np.exp(mix.log_density(np.stack([xx.ravel(), yy.ravel()], 1)))
    assert abs(dens.sum() * (g[1] - g[0]) ** 2 - 1.0) < 1e-3
