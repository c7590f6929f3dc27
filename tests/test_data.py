"""Data sources: ImageFolder and CIFAR files generated here, corrupt files, empty splits."""
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from data import transforms as T
from data.cifar import load_cifar
from data.imagefolder import load_image_folder
from data.loader import make_loader
from data.sources import DataError
from data.splits import load_splits


def write_folder(root, spec, rng, size=12):
    """spec: {split: {class: n_images}}; returns {path: pixel array}."""
    written = {}
    for split, classes in spec.items():
        for c, n in classes.items():
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                px = rng.integers(0, 256, (size, size + 2, 3), dtype=np.uint8)
                path = str(d / ("%d.png" % i))
                Image.fromarray(px).save(path)
                written[path] = px
    return written


def test_image_folder_reads_classes_labels_and_pixels(tmp_path, rng):
    written = write_folder(tmp_path, {"train": {"cat": 2, "dog": 3}, "val": {"cat": 1,
                                                                           "dog": 1}}, rng)
    train, val = load_image_folder(str(tmp_path))
    assert train.classes == ("cat", "dog") and len(train) == 5 and len(val) == 2
    assert list(train.labels) == [0, 0, 1, 1, 1]
    for i, path in enumerate(train.paths):
        np.testing.assert_array_equal(np.asarray(train.load(i)), written[path])


def test_corrupt_image_is_skipped_counted_and_named(tmp_path, rng):
    write_folder(tmp_path, {"train": {"a": 3, "b": 2}, "val": {"a": 1, "b": 1}}, rng)
    bad = tmp_path / "train" / "a" / "1.png"
    bad.write_bytes(b"not a png at all")
    train, _ = load_image_folder(str(tmp_path))
    loader, sampler = make_loader(train, T.small_eval(8), batch_size=5, shuffle=False)
    images, labels, skipped = next(iter(loader))
    assert images.shape == (5, 3, 8, 8)
    bad_index = train.paths.index(str(bad))
    assert list(skipped).count(bad_index) == 1 and (skipped >= 0).sum() == 1
    assert train.describe(bad_index) == str(bad)
    # the unreadable sample was replaced by the next readable one (same class here)
    assert labels[bad_index] == train.labels[bad_index + 1]


def test_folder_errors_name_the_folder(tmp_path, rng):
    with pytest.raises(DataError, match="data folder not found"):
        load_image_folder(str(tmp_path / "nope"))
    write_folder(tmp_path, {"train": {"a": 1, "b": 1}}, rng)
    with pytest.raises(DataError, match="missing folder .*val"):
        load_image_folder(str(tmp_path))
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="val has no class sub-folders"):
        load_image_folder(str(tmp_path))
    (tmp_path / "val" / "a").mkdir()
    with pytest.raises(DataError, match="class folder .*val.a holds no images"):
        load_image_folder(str(tmp_path))


def write_cifar(folder, rng, n_per_batch=4, batches=5):
    folder.mkdir(parents=True)
    data = {}
    names = ["data_batch_%d" % i for i in range(1, batches + 1)] + ["test_batch"]
    for name in names:
        pixels = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        with open(folder / name, "wb") as f:  # bytes keys, as CIFAR's Python 2 pickles read
            pickle.dump({b"batch_label": b"x", b"data": pixels, b"labels": labels}, f, 4)
        data[name] = (pixels, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [("c%d" % i).encode() for i in range(10)]}, f, 4)
    return data


def test_cifar10_python_format(tmp_path, rng):
    data = write_cifar(tmp_path / "cifar-10-batches-py", rng)
    train, val = load_cifar(str(tmp_path), "cifar10")  # the parent folder works too
    assert len(train) == 20 and len(val) == 4 and train.classes[3] == "c3"
    pixels, labels = data["data_batch_2"]
    img = np.asarray(train.load(4 + 1))  # batch 2, row 1
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each 32x32 row-major
    np.testing.assert_array_equal(img[:, :, 0], pixels[1, :1024].reshape(32, 32))
    np.testing.assert_array_equal(img[:, :, 2], pixels[1, 2048:].reshape(32, 32))
    assert train.labels[5] == labels[1]
    splits = load_splits("cifar10", str(tmp_path / "cifar-10-batches-py"), 32)
    x = splits.train_transform(train.load(0), np.random.default_rng(0))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32


def test_cifar_errors(tmp_path, rng):
    write_cifar(tmp_path / "c", rng)
    os.remove(tmp_path / "c" / "data_batch_3")
    with pytest.raises(DataError, match="missing CIFAR file .*data_batch_3"):
        load_cifar(str(tmp_path / "c"))
    (tmp_path / "c" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match="cannot read CIFAR file .*data_batch_3"):
        load_cifar(str(tmp_path / "c"))
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:  # an empty split
        pickle.dump({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, f, 4)
    write_cifar(tmp_path / "empty", rng, n_per_batch=0)
    with pytest.raises(DataError, match="is empty"):
        load_cifar(str(tmp_path / "empty"))
    with open(tmp_path / "c" / "data_batch_3", "wb") as f:  # code in a pickle is refused
        f.write(b"cos\nsystem\n(S'true'\ntR.")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar(str(tmp_path / "c"))


def test_transforms_against_direct_pil():
    px = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    im = Image.fromarray(px)
    rng = np.random.default_rng(0)
    crop = T.RandomResizedCrop(8)
    x, y, w, h = crop.box(30, 20, np.random.default_rng(1))
    assert 0 <= x and x + w <= 30 and 0 <= y and y + h <= 20
    ev = T.imagenet_eval(16)(im, None)
    direct = np.asarray(im.resize((27, 18), Image.BILINEAR).crop((6, 1, 22, 17)), np.float32)
    mean = np.array(T.IMAGENET_MEAN, np.float32)
    std = np.array(T.IMAGENET_STD, np.float32)
    np.testing.assert_allclose(ev, ((direct / 255 - mean) / std).transpose(2, 0, 1), atol=1e-6)
    flipped = T.RandomHorizontalFlip(p=1.0)(im, rng)
    np.testing.assert_array_equal(np.asarray(flipped), px[:, ::-1])
    shifted = np.asarray(T.RandomShift(2)(Image.fromarray(px[:, :20]), rng))
    assert shifted.shape == (20, 20, 3)


def test_digits_default_has_no_flip():
    splits = load_splits("digits", None, 16)
    names = [type(s).__name__ for s in splits.train_transform.steps]
    assert "RandomHorizontalFlip" not in names and "RandomShift" in names
    with pytest.raises(DataError, match="needs --data"):
        load_splits("cifar10", None, 32)
