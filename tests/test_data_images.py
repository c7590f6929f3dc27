"""data/images.read_rgb and the loaders around it: 16-bit PNGs, oversized images, unreadable
files in training and evaluation (findings M6, m1, m3)."""
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from data import transforms as T
from data.imagefolder import load_image_folder
from common.limits import Limits
from data.images import UnreadableImage, read_rgb, to_rgb
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


# -- every mode and container, against an independent expectation (issue 24 item 3) -------------
def _chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def _png(width, height, rows, colour, depth):
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw)) + _chunk(b"IEND", b""))


def _values(h=6, w=7):
    return np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_16_bit_rgb_and_grey_pngs_decode_to_the_8_bit_values_they_were_written_from(tmp_path):
    rgb = _values()
    wide = rgb.astype(">u2") * 257  # 8-bit x 257: the 16-bit encoding of the same levels
    (tmp_path / "rgb16.png").write_bytes(_png(7, 6, [row.tobytes() for row in wide], 2, 16))
    (tmp_path / "grey16.png").write_bytes(
        _png(7, 6, [row.tobytes() for row in wide[:, :, 0]], 0, 16))
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "rgb16.png")), rgb)
    grey = np.asarray(read_rgb(tmp_path / "grey16.png"))
    for c in range(3):
        np.testing.assert_array_equal(grey[:, :, c], rgb[:, :, 0])


@pytest.mark.parametrize("mode,ext", [("I;16", "png"), ("I;16", "tif"), ("I;16B", "tif")])
def test_i16_files_are_scaled(tmp_path, mode, ext):
    levels = _values()[:, :, 1]
    image = Image.frombytes(mode, (7, 6), (levels.astype(">u2" if mode.endswith("B") else "<u2")
                                           * 257).tobytes())
    image.save(tmp_path / ("x." + ext))
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / ("x." + ext)))[:, :, 2], levels)


@pytest.mark.parametrize("transparency", [None, 3, "bytes"])
def test_palette_png_is_its_palette_colours_alpha_dropped(tmp_path, transparency):
    palette = _values(16, 1).reshape(16, 3)
    index = np.random.default_rng(2).integers(0, 16, (5, 9), dtype=np.uint8)
    image = Image.fromarray(index, mode="P")
    image.putpalette(palette.tobytes())
    options = {} if transparency is None else {
        "transparency": bytes(range(0, 160, 10)) if transparency == "bytes" else transparency}
    image.save(tmp_path / "p.png", **options)
    with Image.open(tmp_path / "p.png") as check:
        assert check.mode == "P" and ("transparency" in check.info) == bool(options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = np.asarray(read_rgb(tmp_path / "p.png"))
    np.testing.assert_array_equal(pixels, palette[index])
    assert not caught  # Pillow's "Palette images with Transparency..." stays off stderr


def test_alpha_modes_drop_alpha_and_keep_the_colour(tmp_path):
    rgb, alpha = _values(), np.random.default_rng(3).integers(1, 256, (6, 7), dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([rgb[:, :, 0], alpha]), "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "rgba.png")), rgb)
    la = np.asarray(read_rgb(tmp_path / "la.png"))
    np.testing.assert_array_equal(la, np.repeat(rgb[:, :, :1], 3, axis=2))
    # Premultiplied La (an in-memory mode): un-premultiplied, then alpha dropped, as LA.
    premultiplied = Image.fromarray(np.dstack([rgb[:, :, 0], np.full((6, 7), 255, np.uint8)]),
                                    "LA").convert("La")
    np.testing.assert_array_equal(np.asarray(to_rgb(premultiplied)),
                                  np.repeat(rgb[:, :, :1], 3, axis=2))


def test_cmyk_jpeg_one_bit_ycbcr_and_float_modes(tmp_path):
    # CMYK with K = 0: the RGB is 255 - CMY (flat blocks: JPEG keeps them within a few levels).
    cmy = np.kron(np.array([[[30, 200, 90], [160, 10, 240]]], np.uint8), np.ones((16, 16, 1),
                                                                             np.uint8))
    cmyk = np.dstack([cmy, np.zeros(cmy.shape[:2], np.uint8)])
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    with Image.open(tmp_path / "cmyk.jpg") as check:
        assert check.mode == "CMYK"
    got = np.asarray(read_rgb(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(got - (255 - cmy.astype(int))).max() <= 6
    bits = np.random.default_rng(4).integers(0, 2, (6, 7)).astype(bool)
    Image.fromarray(bits).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(np.asarray(read_rgb(tmp_path / "bits.png"))[:, :, 0],
                                  bits * 255)
    ycc = Image.fromarray(_values()).convert("YCbCr")
    np.testing.assert_array_equal(np.asarray(to_rgb(ycc)), np.asarray(ycc.convert("RGB")))
    floats = np.array([[0.0, 0.5, 1.0, np.nan, np.inf, -np.inf]], np.float32)
    Image.fromarray(floats, mode="F").save(tmp_path / "f.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "invalid value encountered in cast"
        got = np.asarray(read_rgb(tmp_path / "f.tif"))[0, :, 0]
    np.testing.assert_array_equal(got, [0, 128, 255, 0, 255, 0])


def test_exif_rotated_jpeg_decodes_upright(tmp_path):
    upright = np.kron(_values(3, 4), np.ones((16, 16, 1), np.uint8))  # 48 x 64, flat blocks
    stored = np.rot90(upright, k=1)  # orientation 6: the viewer turns it 90 degrees clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "r.jpg", quality=95,
                                                       subsampling=0, exif=exif.tobytes())
    got = np.asarray(read_rgb(tmp_path / "r.jpg")).astype(int)
    assert got.shape == upright.shape
    assert np.abs(got - upright).mean() < 3 and np.abs(got - upright).max() < 40


def test_multi_frame_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (5, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    with Image.open(tmp_path / "a.gif") as check:
        assert check.n_frames == 2
    assert np.asarray(read_rgb(tmp_path / "a.gif"))[0, 0].tolist() == [255, 0, 0]


def test_size_cap_refuses_from_the_header_without_a_warning(tmp_path):
    write_bomb_png(tmp_path / "big.png", 13000, 13000)  # 169 MP: Pillow only warned
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(UnreadableImage, match="13000x13000, 169 megapixels.*50 megapixels"):
            read_rgb(tmp_path / "big.png")
    assert not caught
    Image.fromarray(_values(40, 40)).save(tmp_path / "small.png")
    with pytest.raises(UnreadableImage, match="--max-megapixels"):
        read_rgb(tmp_path / "small.png", limits=Limits(max_megapixels=0.001))
    assert read_rgb(tmp_path / "small.png", limits=Limits(max_megapixels=0.002)).size == (40, 40)


def test_partial_png_is_refused_and_load_truncated_images_stays_off(tmp_path):
    rows = [bytes([90]) * 16 * 3] * 4
    full = _png(16, 16, rows * 4, 2, 8)
    (tmp_path / "full.png").write_bytes(full)
    assert read_rgb(tmp_path / "full.png").size == (16, 16)
    (tmp_path / "part.png").write_bytes(_png(16, 16, rows, 2, 8))  # 4 of 16 rows
    with pytest.raises(UnreadableImage, match="partial"):
        read_rgb(tmp_path / "part.png")
    import train  # noqa: F401  (every entry point's imports leave Pillow strict)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_draft_decoding_keeps_the_shorter_side_at_least_the_target(tmp_path):
    Image.fromarray(_values(300, 410)).save(tmp_path / "big.jpg", quality=90)
    for size, expected_short in ((37, 38), (38, 75), (75, 75), (76, 150), (151, 300)):
        image = read_rgb(tmp_path / "big.jpg", size=size)
        assert min(image.size) == expected_short, (size, image.size)
    assert read_rgb(tmp_path / "big.jpg").size == (410, 300)
