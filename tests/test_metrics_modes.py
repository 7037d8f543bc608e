"""Mode counting (the Stacked-MNIST protocol) and the stacked-digits source."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.data import labeled, stacked
from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import modes as modes_lib

RNG = np.random.default_rng(3)


def test_mode_ids_histogram_and_kl_against_numpy():
    labels = RNG.integers(0, 10, size=(500, 3))
    ids = np.asarray(modes_lib.mode_ids(jnp.asarray(labels), 10))
    np.testing.assert_array_equal(ids, labels[:, 0] * 100 + labels[:, 1] * 10 + labels[:, 2])
    counts = np.asarray(modes_lib.histogram(jnp.asarray(ids), 1000))
    np.testing.assert_array_equal(counts, np.bincount(ids, minlength=1000))
    p = counts / counts.sum()
    q = RNG.uniform(0.5, 1.5, 1000)
    q /= q.sum()
    want = sum(pi * np.log(pi / qi) for pi, qi in zip(p, q, strict=True) if pi > 0)
    np.testing.assert_allclose(float(modes_lib.kl_divergence(jnp.asarray(p), jnp.asarray(q))), want, rtol=1e-4)


@pytest.mark.parametrize("k", [1, 7, 250, 1000])
def test_samples_at_exactly_k_modes_count_k(k):
    """Equal numbers of samples at k distinct triples: k modes, KL(p || uniform) = log(1000 / k)."""
    chosen = RNG.choice(1000, size=k, replace=False)
    ids = np.repeat(chosen, 4)
    labels = np.stack([ids // 100, (ids // 10) % 10, ids % 10], axis=1)
    out = modes_lib.mode_stats(jnp.asarray(RNG.permutation(labels)), 10)
    assert int(out["modes"]) == k
    np.testing.assert_allclose(float(out["mode_kl"]), np.log(1000 / k), atol=1e-5)
    assert set(np.flatnonzero(np.asarray(out["histogram"]))) == set(chosen)


def test_class_histogram_kl_against_a_reference_distribution():
    labels = np.array([0] * 30 + [1] * 70)
    ref = np.array([0.5, 0.5])
    out = modes_lib.mode_stats(jnp.asarray(labels), 2, reference=jnp.asarray(ref))
    assert int(out["modes"]) == 2
    np.testing.assert_allclose(float(out["mode_kl"]), 0.3 * np.log(0.6) + 0.7 * np.log(1.4), rtol=1e-5)


def _toy_digits():
    digits = RNG.uniform(-1, 1, size=(40, 6, 5)).astype(np.float32)
    return stacked.StackedDigits("toy", digits, (np.arange(40) % 10).astype(np.int32))


def test_stacked_examples_are_keyed_by_position_and_match_their_labels():
    src = _toy_digits()
    key = jax.random.key(0)
    ids = jnp.arange(12, dtype=jnp.uint32)
    draw = jax.jit(src.sample_ids)
    whole = np.asarray(draw(key, ids))
    halves = np.concatenate([np.asarray(draw(key, ids[:6])), np.asarray(draw(key, ids[6:]))])
    np.testing.assert_array_equal(whole, halves)
    assert whole.shape == (12, 6, 5, 3) and src.example_shape == (6, 5, 3) and src.num_modes == 1000
    images, labels = (np.asarray(a) for a in jax.jit(src.sample_with_labels, static_argnums=1)(key, 200))
    idx = np.asarray(jax.jit(src.draw_indices)(key, jnp.arange(200, dtype=jnp.uint32)))
    for c in range(3):
        np.testing.assert_array_equal(images[..., c], src.digits[idx[:, c]])
        np.testing.assert_array_equal(labels[:, c], src.labels[idx[:, c]])
    # channels are drawn independently: they disagree on most examples
    assert np.mean(idx[:, 0] == idx[:, 1]) < 0.2


@pytest.mark.slow
def test_classifier_counts_the_modes_of_images_built_at_k_triples(digits_dir, tmp_path):
    """Stacked images made only of k chosen triples (real held-out digits): the per-channel
    classifier finds those k modes, and they hold nearly all of the samples."""
    train = labeled.load("sklearn_digits", data_dir=digits_dir)
    test = labeled.load("sklearn_digits", split="test", data_dir=digits_dir)
    clf = clf_lib.fit(train.images, train.labels, 10, steps=300, batch_size=64)
    k, per_mode = 6, 40
    chosen = RNG.choice(1000, size=k, replace=False)
    by_class = {c: np.flatnonzero(test.labels == c) for c in range(10)}
    images = []
    for mode in chosen:
        triple = (mode // 100, (mode // 10) % 10, mode % 10)
        idx = np.stack([RNG.choice(by_class[d], size=per_mode) for d in triple], axis=1)
        images.append(np.moveaxis(labeled.to_float(test.images[idx][..., 0]), 1, -1))
    images = np.concatenate(images)  # [k * per_mode, 28, 28, 3]

    def per_channel(x):
        b, h, w, c = x.shape
        return clf.predict(jnp.moveaxis(x, -1, 1).reshape(b * c, h, w, 1)).reshape(b, c)

    labels = jax.jit(per_channel)(jnp.asarray(images))
    out = modes_lib.mode_stats(labels, 10)
    counts = np.asarray(out["histogram"])
    top = np.argsort(counts)[::-1][:k]
    assert set(top) == set(chosen)
    assert counts[chosen].sum() >= 0.85 * len(images)
    assert k <= int(out["modes"]) <= k + 0.15 * len(images)
