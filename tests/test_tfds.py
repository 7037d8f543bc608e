"""The TFDS image pipeline, offline: datasets built in a temporary data_dir and read through
TFDS itself; batches keyed by (seed, round); the host-fed training loop; error messages."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxgan.data import DataError, check_batch
from jaxgan.data.host import IndexedImages, Prefetcher, epoch_permutation, stream_positions
from jaxgan.data.tfds import TFDSImages, load_images
from tests import tfds_datasets


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return tfds_datasets.prepare(str(tmp_path_factory.mktemp("tfds")))


def _sorted_rows(a):
    flat = a.reshape(a.shape[0], -1)
    return flat[np.lexsort(flat.T[::-1])]


def test_digits_round_trip_through_tfds(data_dir):
    src = load_images("jaxgan_test_digits", data_dir=data_dir, cache=False)
    expected, _ = tfds_datasets.digits_images()
    assert src.images.shape == expected.shape and src.images.dtype == np.uint8
    # TFDS stores examples in its own order: compare as multisets of images.
    np.testing.assert_array_equal(_sorted_rows(src.images), _sorted_rows(expected))


def test_upscale_matches_pillow_bilinear(data_dir):
    native = load_images("jaxgan_test_digits", data_dir=data_dir, cache=False).images
    big = load_images("jaxgan_test_digits", data_dir=data_dir, image_size=16, cache=False).images
    assert big.shape == (native.shape[0], 16, 16, 1)
    for k in range(5):
        ref = np.asarray(Image.fromarray(native[k, :, :, 0]).resize((16, 16), Image.BILINEAR))
        assert np.max(np.abs(big[k, :, :, 0].astype(int) - ref.astype(int))) <= 1


def test_non_square_images_are_center_cropped(data_dir):
    src = load_images("jaxgan_test_rects", data_dir=data_dir, image_size=8, cache=False)
    assert src.images.shape == (tfds_datasets.RECTS, 8, 8, 3)
    for img in src.images:
        i = int(img[0, 0, 0])  # the red channel carries the example's index
        np.testing.assert_array_equal(img, tfds_datasets.rect_image(i)[2:10])


def test_cache_is_written_once_and_memory_mapped(data_dir):
    a = load_images("jaxgan_test_digits", data_dir=data_dir, image_size=16)
    cached = os.listdir(os.path.join(data_dir, "jaxgan_cache"))
    assert any("jaxgan_test_digits" in f and "16x16x1" in f for f in cached)
    b = load_images("jaxgan_test_digits", data_dir=data_dir, image_size=16)
    assert isinstance(b.images, np.memmap)
    np.testing.assert_array_equal(a.images, b.images)


def test_non_square_without_image_size_asks_for_it(data_dir):
    with pytest.raises(DataError, match="set image_size"):
        TFDSImages("jaxgan_test_rects", data_dir=data_dir)


# ---------------------------------------------------------------------- keyed batches


def _index_source(n=10, seed=0, **kw):
    """Images whose pixel [0, 0, 0] is their index (n <= 256)."""
    images = np.zeros((n, 2, 2, 1), np.uint8)
    images[:, 0, 0, 0] = np.arange(n)
    return IndexedImages(images, seed=seed, process_index=kw.get("pi", 0), process_count=kw.get("pc", 1))


def _ids(batches):
    return batches[..., 0, 0, 0].astype(int)


def test_each_epoch_visits_every_example_once():
    src = _index_source(n=10)
    ids = _ids(src.host_batches(0, 15, 2, 4)).reshape(-1)  # 120 positions = 12 epochs
    for e in range(12):
        assert sorted(ids[10 * e : 10 * (e + 1)]) == list(range(10))
    assert not all(np.array_equal(ids[:10], ids[10 * e : 10 * (e + 1)]) for e in range(1, 12))


def test_batches_are_a_pure_function_of_seed_and_round():
    a, b = _index_source(seed=3), _index_source(seed=3)
    whole = a.host_batches(0, 8, 2, 4)
    np.testing.assert_array_equal(b.host_batches(5, 3, 2, 4), whole[5:8])  # a resume at round 5
    assert not np.array_equal(_index_source(seed=4).host_batches(0, 8, 2, 4), whole)


def test_hosts_split_each_global_batch_by_slot():
    one = _index_source().host_batches(2, 3, 2, 6)
    parts = [_index_source(pi=h, pc=3).host_batches(2, 3, 2, 6) for h in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts, axis=2), one)
    with pytest.raises(ValueError, match="does not split over 4 hosts"):
        stream_positions(0, 1, 1, 6, 0, 4)


def test_permutation_is_a_permutation_and_seeded():
    p = epoch_permutation(7, 2, 1000)
    assert sorted(p) == list(range(1000))
    np.testing.assert_array_equal(p, epoch_permutation(7, 2, 1000))
    assert not np.array_equal(p, epoch_permutation(7, 3, 1000))


def test_pixels_map_to_unit_range_on_device():
    src = _index_source()
    x = np.array([0, 255, 51], np.uint8)
    y = np.asarray(jax.jit(src.device_transform)(x))
    np.testing.assert_allclose(y, [-1.0, 1.0, 51 / 127.5 - 1], rtol=1e-6)
    assert y[0] == -1.0 and y[1] == 1.0  # exactly: the range check must not flag real pixels


def test_check_batch_warns_outside_unit_range():
    with pytest.warns(UserWarning, match=r"outside the \[-1, 1\]"):
        check_batch(np.full((2, 4, 4, 1), 200.0, np.float32), (4, 4, 1), value_range=(-1.0, 1.0))


def test_prefetcher_serves_any_schedule_and_overlaps_predicted_chunks():
    src = _index_source()
    with Prefetcher(src, d_steps=1, global_batch=4, total=20) as pre:
        for first, n in [(3, 2), (5, 5), (10, 5), (15, 3), (18, 2)]:
            np.testing.assert_array_equal(np.asarray(pre.get(first, n)), src.host_batches(first, n, 1, 4))
    # Predicted: (5, 2) after (3, 2) missed, (10, 5) and (15, 5) predicted, (15, 3) missed, (18, 2) hit.
    assert pre.misses == 2


def test_prefetcher_hands_errors_to_the_consumer():
    class Broken:
        def host_batches(self, first, *args):
            if first > 0:
                raise OSError("disk gone")
            return np.zeros((1, 1, 2, 1), np.uint8)

    with Prefetcher(Broken(), d_steps=1, global_batch=2, total=10) as pre:
        pre.get(0, 1)
        with pytest.raises(OSError, match="disk"):
            pre.get(1, 1)


# ---------------------------------------------------------------------- named datasets, errors


def test_named_dataset_not_prepared_says_where_and_how(tmp_path):
    src = TFDSImages("mnist", data_dir=str(tmp_path))  # metadata only: no data needed yet
    assert src.example_shape == (28, 28, 1)
    with pytest.raises(DataError) as err:
        src.load()
    msg = str(err.value)
    assert str(tmp_path) in msg and "tfds build mnist" in msg and "download=true" in msg


def test_unknown_dataset_suggests_close_names(tmp_path):
    with pytest.raises(DataError, match=r"Did you mean .*mnist"):
        TFDSImages("mnsit", data_dir=str(tmp_path))


def test_mocked_cifar10_goes_through_the_pipeline(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20):
        src = load_images("cifar10", data_dir=str(tmp_path), image_size=16, cache=False)
    assert src.images.shape == (20, 16, 16, 3)
    batch = np.asarray(jax.jit(src.device_transform)(src.host_batches(0, 1, 1, 8)[0, 0]))
    check_batch(batch, (16, 16, 3), value_range=(-1.0, 1.0))


def _run_cli(*args, timeout=900):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, "-m", "jaxgan", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_cli_missing_dataset_is_one_line_without_traceback(tmp_path):
    res = _run_cli("train", "--preset", "dcgan-mnist", "--out", str(tmp_path / "run"), "--quiet",
                   "--set", f"data_dir={tmp_path / 'empty'}")
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    assert "jaxgan: error:" in res.stderr and "is not prepared" in res.stderr and "empty" in res.stderr


def test_cli_trains_dcgan_mnist_on_a_local_tfds_dataset_on_one_and_two_devices(data_dir, tmp_path):
    """`jaxgan train --preset dcgan-mnist --set dataset=<local TFDS> data_dir=...` end to end: on
    one device and pmapped over two (host batches with a leading device axis, sync batch norm),
    the same training (the run's metrics agree) and a sample grid PNG."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    common = ["--preset", "dcgan-mnist", "--steps", "2", "--quiet", "--set", "dataset=jaxgan_test_digits",
              f"data_dir={data_dir}", "image_size=16", "g_width=8", "d_width=8", "latent_dim=16", "batch_size=16",
              "log_every=1", "plot_every=2", "ckpt_every=2"]
    summaries = {}
    for name, extra in (("one", ["devices=1"]), ("two", ["devices=2", "parallel=pmap"])):
        out = tmp_path / name
        res = subprocess.run([sys.executable, "-m", "jaxgan", "train", "--out", str(out), *common, *extra],
                             capture_output=True, text=True, timeout=900, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        assert (out / "samples_000002.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        summaries[name] = json.loads((out / "summary.json").read_text())
    assert summaries["two"]["devices"] == 2 and summaries["two"]["parallel"] == "pmap"
    for key in ("d_loss", "g_loss", "diversity", "d_grad_norm", "g_grad_norm"):
        np.testing.assert_allclose(summaries["two"][key], summaries["one"][key], rtol=1e-4, err_msg=key)


# ---------------------------------------------------------------------- the host-fed training loop


def _digits_config(data_dir, **kw):
    from jaxgan import configs

    base = configs.preset("dcgan-mnist")
    return configs.apply_overrides(base, {
        "dataset": "jaxgan_test_digits", "data_dir": data_dir, "image_size": 16, "g_width": 8, "d_width": 8,
        "latent_dim": 16, "batch_size": 16, "log_every": 2, "plot_every": 4, "ckpt_every": 2, **kw,
    })


@pytest.mark.slow
def test_train_on_tfds_digits_writes_samples_and_resumes_exactly(data_dir, tmp_path):
    from jaxgan import loop

    config = _digits_config(data_dir, steps=4)
    straight = loop.train(config, str(tmp_path / "a"), progress=False, echo=lambda m: None)
    assert os.path.isfile(tmp_path / "a" / "samples_000004.png")
    with open(tmp_path / "a" / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["step"] for r in rows if "d_loss" in r] == [2, 4]
    # Interrupted at step 2, then resumed: the same batches, hence the same weights.
    loop.train(_digits_config(data_dir, steps=2), str(tmp_path / "b"), progress=False, echo=lambda m: None)
    resumed = loop.train(config, str(tmp_path / "b"), progress=False, echo=lambda m: None)
    assert resumed.start_step == 2
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6),
                 resumed.state.g.params, straight.state.g.params)


MODES_SCRIPT = """
import json, os, sys
from jaxgan import configs, loop
data_dir, out = sys.argv[1], sys.argv[2]
rows = {}
for name, kw in (("jit", {"devices": 1}), ("pmap", {"devices": 2, "parallel": "pmap"}),
                 ("sharding", {"devices": 2, "parallel": "sharding"}),
                 ("shard_map", {"devices": 2, "parallel": "shard_map"})):
    c = configs.apply_overrides(configs.preset("dcgan-mnist"), {
        "dataset": "jaxgan_test_digits", "data_dir": data_dir, "image_size": 16, "g_width": 8, "d_width": 8,
        "latent_dim": 16, "batch_size": 16, "log_every": 1, "plot_every": 2, "ckpt_every": 2, "steps": 2, **kw})
    r = loop.train(c, os.path.join(out, name), progress=False, echo=lambda m: None)
    rows[name] = r.last_metrics
print(json.dumps(rows))
"""


@pytest.mark.slow
def test_host_fed_batches_split_over_devices_train_like_one_device(data_dir, tmp_path):
    """Host-fed TFDS batches under pmap (a leading device axis), jit+sharding and shard_map on 2
    devices (the batch axis split over the mesh): the same metrics as one device."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    res = subprocess.run([sys.executable, "-c", MODES_SCRIPT, data_dir, str(tmp_path)], capture_output=True,
                         text=True, timeout=900, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(res.stdout.strip().splitlines()[-1])
    for mode in ("pmap", "sharding", "shard_map"):
        for key in ("d_loss", "g_loss", "diversity", "d_grad_norm", "g_grad_norm"):
            np.testing.assert_allclose(rows[mode][key], rows["jit"][key], rtol=1e-4, err_msg=f"{mode} {key}")
