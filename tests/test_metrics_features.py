"""Feature extractors: the offline digits, the evaluation classifier and its cache, and the FID
Inception loaded from PyTorch-layout weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgan.data import labeled, sklearn_digits
from jaxgan.metrics import classifier as clf_lib
from jaxgan.metrics import features as feat_lib


def test_sklearn_digits_is_a_real_tfds_dataset(digits_dir):
    train = labeled.load("sklearn_digits", data_dir=digits_dir)
    test = labeled.load("sklearn_digits", split="test", data_dir=digits_dir)
    assert train.images.shape == (1497, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (300, 28, 28, 1) and train.num_classes == 10
    images, labels = sklearn_digits.digit_images()
    idx = sklearn_digits.split_indices(len(images))
    # TFDS stores the train split in its own (hashed) order: compare as sets of (image, label)
    want = {(images[i].tobytes(), int(labels[i])) for i in idx["train"]}
    got = {(im.tobytes(), int(lb)) for im, lb in zip(train.images, train.labels, strict=True)}
    assert got == want
    # MNIST's layout: the digit sits in the central 20x20, a 4-pixel empty frame around it
    assert train.images[:, :4].max() == 0 and train.images[:, 24:].max() == 0
    assert np.bincount(train.labels, minlength=10).min() > 100


def test_missing_dataset_names_the_way_out(tmp_path):
    from jaxgan.data.checks import DataError

    with pytest.raises(DataError, match=r"not prepared in .*sklearn_digits"):
        labeled.load("mnist", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="no TFDS dataset named"):
        labeled.load("no_such_dataset_xyz", data_dir=str(tmp_path))


@pytest.fixture(scope="module")
def digits(digits_dir):
    # 16x16 (resized from 28x28) keeps the test quick; the digits stay legible
    return (labeled.load("sklearn_digits", data_dir=digits_dir, image_size=16),
            labeled.load("sklearn_digits", split="test", data_dir=digits_dir, image_size=16))


def test_classifier_learns_the_digits_and_its_cache_is_reused(digits, tmp_path):
    train, test = digits
    calls = []

    def data():
        calls.append(1)
        return train.images, train.labels, train.num_classes, (test.images, test.labels)

    identity = {"dataset": "sklearn_digits", "train_size": int(train.images.shape[0])}
    clf, cached = clf_lib.fit_cached(str(tmp_path), identity, data, echo=lambda m: None, steps=300, batch_size=64)
    assert not cached and len(calls) == 1
    assert clf.info["test_accuracy"] > 0.95, clf.info
    # an independent count of the held-out accuracy
    preds = np.asarray(jax.jit(clf.predict)(jnp.asarray(labeled.to_float(test.images))))
    assert np.mean(preds == test.labels) == pytest.approx(clf.info["test_accuracy"])
    again, cached = clf_lib.fit_cached(str(tmp_path), identity, data, echo=lambda m: None, steps=300, batch_size=64)
    assert cached and len(calls) == 1  # loaded, not refitted
    for a, b in zip(jax.tree.leaves(clf.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    feats = np.asarray(jax.jit(again.features)(jnp.asarray(labeled.to_float(test.images[:8]))))
    assert feats.shape == (8, 128) and np.all(np.isfinite(feats)) and train.images.shape[1:] == (16, 16, 1)
    # another training recipe is another cache entry
    _, cached = clf_lib.fit_cached(str(tmp_path), identity, data, echo=lambda m: None, steps=5, batch_size=64)
    assert not cached and len(calls) == 2


# ----------------------------------------------------------------------------- Inception


def _basic(out, cin, kh, kw):
    return {"conv.weight": (out, cin, kh, kw), "bn.weight": (out,), "bn.bias": (out,),
            "bn.running_mean": (out,), "bn.running_var": (out,)}


def _torchvision_fid_inception_shapes():
    """torchvision's Inception3 parameter names and shapes (the FID variant: no AuxLogits, and
    fc dropped), written out from torchvision's architecture, independently of jaxgan's module."""
    spec = {}

    def add(prefix, convs):
        for name, args in convs.items():
            for k, v in _basic(*args).items():
                spec[f"{prefix}{name}.{k}"] = v

    add("", {"Conv2d_1a_3x3": (32, 3, 3, 3), "Conv2d_2a_3x3": (32, 32, 3, 3), "Conv2d_2b_3x3": (64, 32, 3, 3),
             "Conv2d_3b_1x1": (80, 64, 1, 1), "Conv2d_4a_3x3": (192, 80, 3, 3)})
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        add(f"{name}.", {"branch1x1": (64, cin, 1, 1), "branch5x5_1": (48, cin, 1, 1), "branch5x5_2": (64, 48, 5, 5),
                         "branch3x3dbl_1": (64, cin, 1, 1), "branch3x3dbl_2": (96, 64, 3, 3),
                         "branch3x3dbl_3": (96, 96, 3, 3), "branch_pool": (pool, cin, 1, 1)})
    add("Mixed_6a.", {"branch3x3": (384, 288, 3, 3), "branch3x3dbl_1": (64, 288, 1, 1),
                      "branch3x3dbl_2": (96, 64, 3, 3), "branch3x3dbl_3": (96, 96, 3, 3)})
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        add(f"{name}.", {"branch1x1": (192, 768, 1, 1), "branch7x7_1": (c7, 768, 1, 1), "branch7x7_2": (c7, c7, 1, 7),
                         "branch7x7_3": (192, c7, 7, 1), "branch7x7dbl_1": (c7, 768, 1, 1),
                         "branch7x7dbl_2": (c7, c7, 7, 1), "branch7x7dbl_3": (c7, c7, 1, 7),
                         "branch7x7dbl_4": (c7, c7, 7, 1), "branch7x7dbl_5": (192, c7, 1, 7),
                         "branch_pool": (192, 768, 1, 1)})
    add("Mixed_7a.", {"branch3x3_1": (192, 768, 1, 1), "branch3x3_2": (320, 192, 3, 3),
                      "branch7x7x3_1": (192, 768, 1, 1), "branch7x7x3_2": (192, 192, 1, 7),
                      "branch7x7x3_3": (192, 192, 7, 1), "branch7x7x3_4": (192, 192, 3, 3)})
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        add(f"{name}.", {"branch1x1": (320, cin, 1, 1), "branch3x3_1": (384, cin, 1, 1),
                         "branch3x3_2a": (384, 384, 1, 3), "branch3x3_2b": (384, 384, 3, 1),
                         "branch3x3dbl_1": (448, cin, 1, 1), "branch3x3dbl_2": (384, 448, 3, 3),
                         "branch3x3dbl_3a": (384, 384, 1, 3), "branch3x3dbl_3b": (384, 384, 3, 1),
                         "branch_pool": (192, cin, 1, 1)})
    return spec


def _random_state_dict(rng):
    """Random weights in the documented format, plus the keys a real state_dict also carries."""
    sd = {}
    for k, shape in _torchvision_fid_inception_shapes().items():
        if k.endswith("running_var"):
            sd[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        elif k.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            sd[k] = rng.normal(0, np.sqrt(2.0 / fan_in), shape).astype(np.float32)
        else:
            sd[k] = rng.normal(0, 0.1, shape).astype(np.float32)
        if k.endswith("bn.weight"):
            sd[k] = sd[k] + 1.0
            sd[k.replace("weight", "num_batches_tracked")] = np.array(0, np.int64)
    sd["fc.weight"] = rng.normal(size=(1008, 2048)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1008, np.float32)
    return sd


def test_inception_names_and_shapes_are_torchvisions():
    zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), feat_lib._abstract_inception())
    ours = feat_lib.inception_to_torch_state(zeros)
    spec = _torchvision_fid_inception_shapes()
    assert set(ours) == set(spec)
    assert {k: tuple(v.shape) for k, v in ours.items()} == spec


def test_load_inception_refuses_bad_files_by_name(tmp_path):
    rng = np.random.default_rng(0)
    sd = _random_state_dict(rng)
    missing = dict(sd)
    del missing["Mixed_6b.branch7x7_2.conv.weight"]
    np.savez(tmp_path / "missing.npz", **missing)
    with pytest.raises(ValueError, match=r"missing key.*Mixed_6b\.branch7x7_2\.conv\.weight"):
        feat_lib.load_inception(str(tmp_path / "missing.npz"))
    wrong = dict(sd)
    wrong["Mixed_6b.branch7x7_2.conv.weight"] = np.zeros((128, 128, 7, 1), np.float32)  # 7x1, not 1x7
    np.savez(tmp_path / "wrong.npz", **wrong)
    with pytest.raises(ValueError, match=r"wrong shapes: Mixed_6b\.branch7x7_2\.conv\.weight"):
        feat_lib.load_inception(str(tmp_path / "wrong.npz"))
    with pytest.raises(ValueError, match="do not exist"):
        feat_lib.load_inception(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="cannot read"):
        feat_lib.load_inception(str(tmp_path / "junk.npz"))


def _torch_conv_bn_relu(x, sd, prefix, stride=1, padding=(0, 0)):
    """PyTorch semantics in numpy: cross-correlation with OIHW weights, eval-mode batch norm
    (eps 1e-3), ReLU. ``x: [H, W, C]`` (one image)."""
    w = sd[f"{prefix}.conv.weight"].astype(np.float64)
    o, _, kh, kw = w.shape
    ph, pw = padding
    xp = np.pad(x.astype(np.float64), ((ph, ph), (pw, pw), (0, 0)))
    h_out = (xp.shape[0] - kh) // stride + 1
    w_out = (xp.shape[1] - kw) // stride + 1
    out = np.zeros((h_out, w_out, o))
    for r in range(h_out):
        for c in range(w_out):
            patch = xp[r * stride:r * stride + kh, c * stride:c * stride + kw, :]  # [kh, kw, i]
            out[r, c] = np.einsum("hwi,oihw->o", patch, w)
    bn = {k: sd[f"{prefix}.bn.{k}"].astype(np.float64) for k in ("weight", "bias", "running_mean", "running_var")}
    out = (out - bn["running_mean"]) / np.sqrt(bn["running_var"] + 1e-3) * bn["weight"] + bn["bias"]
    return np.maximum(out, 0.0)


@pytest.mark.slow
def test_inception_from_npz_computes_with_pytorch_semantics(tmp_path):
    """Weights saved in the documented format load, and the layers compute what PyTorch's would
    with them: the stem's strided 3x3 conv and an asymmetric 1x7 conv checked against numpy."""
    rng = np.random.default_rng(1)
    sd = _random_state_dict(rng)
    np.savez(tmp_path / "inception.npz", **sd)
    variables = feat_lib.load_inception_variables(str(tmp_path / "inception.npz"))
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        names = tuple(str(getattr(p, "key", p)) for p in path)
        want = sd[feat_lib._torch_name(names)]
        np.testing.assert_array_equal(np.asarray(leaf), want.transpose(2, 3, 1, 0) if names[-1] == "kernel" else want)

    images = rng.uniform(-1, 1, size=(2, 28, 28, 1)).astype(np.float32)
    x = feat_lib.inception_input(jnp.asarray(images), 75)
    np.testing.assert_array_equal(np.asarray(x[..., 0]), np.asarray(x[..., 2]))  # grey -> 3 equal channels
    model = feat_lib.InceptionV3FID()
    feats, inter = jax.jit(lambda v, x: model.apply(v, x, capture_intermediates=True))(variables, x)
    feats, x = np.asarray(feats), np.asarray(x)
    assert feats.shape == (2, 2048) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
    assert not np.allclose(feats[0], feats[1])
    stem = np.asarray(inter["intermediates"]["Conv2d_1a_3x3"]["__call__"][0])[0]
    assert stem.shape == (37, 37, 32)
    np.testing.assert_allclose(stem, _torch_conv_bn_relu(x[0], sd, "Conv2d_1a_3x3", stride=2), rtol=1e-4, atol=1e-4)
    mixed = inter["intermediates"]["Mixed_6b"]
    before = np.asarray(mixed["branch7x7_1"]["__call__"][0])[0]
    after = np.asarray(mixed["branch7x7_2"]["__call__"][0])[0]
    np.testing.assert_allclose(after, _torch_conv_bn_relu(before, sd, "Mixed_6b.branch7x7_2", padding=(0, 3)),
                               rtol=1e-4, atol=1e-4)
    # pool3 is the mean of Mixed_7c over space
    last = np.asarray(inter["intermediates"]["Mixed_7c"]["__call__"][0])
    np.testing.assert_allclose(feats, last.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
