"""data/images.read_rgb and the loaders around it: 16-bit PNGs, oversized images, unreadable
files in training and evaluation (findings M6, m1, m3)."""
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data import transforms as T
from data.imagefolder import load_image_folder
from data.images import UnreadableImage, read_rgb
from data.loader import make_loader
from data.sources import DataError
from errors import UserError


def write_bomb_png(path, width=20000, height=20000):
    """A valid PNG header claiming width x height (400 MP by default), above Pillow's
    decompression-bomb limit; the file itself is a few bytes."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    idat = zlib.compress(b"\x00" * 16)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat)
                + chunk(b"IEND", b""))


def test_bomb_file_is_really_above_pillows_limit(tmp_path):
    path = tmp_path / "bomb.png"
    write_bomb_png(path)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)


def _folder(root, rng, classes=("a", "b"), n=3, size=12):
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (size, size, 3), np.uint8)).save(
                    d / ("%d.png" % i))


def test_16bit_grey_png_is_scaled_to_8_bit_not_clipped_to_white(tmp_path, rng):
    _folder(tmp_path, rng)
    values = np.linspace(0, 65535, 12 * 14).round().astype(np.uint16).reshape(12, 14)
    path = tmp_path / "train" / "a" / "0.png"
    Image.fromarray(values).save(path)  # Pillow writes a 16-bit greyscale PNG
    with Image.open(path) as check:
        assert check.mode == "I;16"
    train, _ = load_image_folder(str(tmp_path))
    pixels = np.asarray(train.load(train.paths.index(str(path))))
    expected = np.rint(values / 257.0).astype(np.uint8)  # 65535 -> 255, 0 -> 0, linear
    assert pixels.shape == (12, 14, 3) and pixels.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(pixels[:, :, c], expected)


def test_float_and_8_bit_int_images_keep_their_scale(tmp_path):
    grey = np.arange(0, 240, 2, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(grey.astype(np.int32), mode="I").save(tmp_path / "i.tif")
    Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(tmp_path / "f.tif")
    for name in ("i.tif", "f.tif"):
        np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / name))[:, :, 1], grey)


def test_oversized_image_is_skipped_and_counted_like_a_corrupt_one(tmp_path, rng):
    _folder(tmp_path, rng)
    bomb = tmp_path / "train" / "a" / "1.png"
    write_bomb_png(bomb)
    train, _ = load_image_folder(str(tmp_path))
    loader, _ = make_loader(train, T.small_train(8), batch_size=6, shuffle=False)
    images, labels, skipped = next(iter(loader))
    assert images.shape == (6, 3, 8, 8)
    assert [int(s) for s in skipped if s >= 0] == [train.paths.index(str(bomb))]
    with pytest.raises(UnreadableImage, match="too large"):
        read_rgb(bomb)


@pytest.mark.parametrize("workers", [0, 1])
def test_all_train_images_unreadable_is_one_data_error(tmp_path, rng, workers):
    _folder(tmp_path, rng, n=2)
    for p in (tmp_path / "train").rglob("*.png"):
        p.write_bytes(b"not an image")
    train, _ = load_image_folder(str(tmp_path))
    loader, _ = make_loader(train, T.imagenet_train(16), batch_size=2, shuffle=True,
                            workers=workers)
    with pytest.raises(DataError, match="no readable image in .*train"):
        for _ in loader:
            pass


def test_read_rgb_errors_are_user_errors(tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    for path, words in ((tmp_path / "none.png", "no such file"), (tmp_path, "a folder"),
                        (tmp_path / "text.jpg", "cannot read image")):
        with pytest.raises(UserError, match=words):
            read_rgb(path)
