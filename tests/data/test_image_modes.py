"""Every image mode Pillow reads, decoded by the image-folder decoder: each test builds a file with Pillow, then
compares the decoded pixels with what the file holds, by the rules in minimaxdd.data.image_folders (16-bit
divided by 257, float in [0, 1] times 255, alpha over black, EXIF orientation applied, the first frame), or
checks that the file is refused with a message naming it and the fix."""
from __future__ import annotations

import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from minimaxdd.data.image_folders import decode_image
from minimaxdd.data.sources import load_dataset
from minimaxdd.errors import DatasetError

SIDE = 6      # square files of this side decode at their own size: no resize, no crop, so pixels compare exactly
RNG = np.random.default_rng(0)


def pixels(shape, high=256, dtype=np.uint8) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


def decoded(tmp_path, im: Image.Image, name: str, mode: str, **save) -> np.ndarray:
    """Save `im` as tmp_path/name, decode it at its own side in `mode`; (H, W) for "L", (H, W, 3) for "RGB"."""
    im.save(tmp_path / name, **save)
    a = decode_image(tmp_path / name, SIDE, mode)
    assert a.dtype == np.uint8 and a.shape == ((1 if mode == "L" else 3), SIDE, SIDE)
    return a[0] if mode == "L" else a.transpose(1, 2, 0)


# ----------------------------------------------------------------------------- 8-bit modes


@pytest.mark.parametrize("name", ["a.png", "a.bmp", "a.ppm", "a.tif", "a.webp"])
def test_rgb_files_keep_their_pixels(tmp_path, name):
    a = pixels((SIDE, SIDE, 3))
    save = {"lossless": True} if name.endswith(".webp") else {}
    assert np.array_equal(decoded(tmp_path, Image.fromarray(a), name, "RGB", **save), a)


@pytest.mark.parametrize("name", ["a.png", "a.pgm", "a.tif", "a.bmp"])
def test_grey_files_keep_their_pixels_in_one_channel_or_three(tmp_path, name):
    a = pixels((SIDE, SIDE))
    assert np.array_equal(decoded(tmp_path, Image.fromarray(a), name, "L"), a)
    assert np.array_equal(decoded(tmp_path, Image.fromarray(a), name, "RGB"), np.stack([a] * 3, -1))


def test_one_bit_is_0_or_255(tmp_path):
    bits = pixels((SIDE, SIDE), 2).astype(bool)
    got = decoded(tmp_path, Image.fromarray(bits).convert("1"), "a.png", "L")
    assert Image.open(tmp_path / "a.png").mode == "1"
    assert np.array_equal(got, np.where(bits, 255, 0))


def test_a_palette_gives_its_colours(tmp_path):
    palette, index = pixels((16, 3)), pixels((SIDE, SIDE), 16)
    im = Image.fromarray(index, "P")
    im.putpalette(palette.reshape(-1).tolist())
    assert np.array_equal(decoded(tmp_path, im, "a.png", "RGB"), palette[index])


@pytest.mark.parametrize("name", ["a.png", "a.gif"])
def test_a_transparent_palette_colour_is_black(tmp_path, name):
    palette, index = pixels((16, 3)), pixels((SIDE, SIDE), 16)
    index[0, :] = 5                              # one row of the transparent colour at least
    im = Image.fromarray(index, "P")
    im.putpalette(palette.reshape(-1).tolist())
    im.info["transparency"] = 5
    got = decoded(tmp_path, im, name, "RGB", transparency=5)
    assert Image.open(tmp_path / name).mode == "P" and "transparency" in Image.open(tmp_path / name).info
    want = np.where((index == 5)[..., None], 0, palette[index])
    assert np.array_equal(got, want)


@pytest.mark.parametrize("mode,name", [("RGBA", "a.png"), ("RGBA", "a.tif"), ("LA", "a.png"), ("PA", "a.tif")])
def test_alpha_is_the_colour_times_its_opacity(tmp_path, mode, name):
    channels = {"RGBA": 4, "LA": 2, "PA": 2}[mode]
    a = pixels((SIDE, SIDE, channels))
    a[0, 0, -1], a[0, 1, -1] = 0, 255            # fully transparent and fully opaque pixels among them
    if mode == "PA":
        palette = pixels((256, 3))
        im = Image.fromarray(a, "LA").copy()
        im = Image.frombytes("PA", im.size, im.tobytes())
        im.putpalette(palette.reshape(-1).tolist())
        colour = palette[a[..., 0]]
    else:
        im = Image.fromarray(a, mode)
        colour = a[..., :-1]
    want = np.rint(colour * a[..., -1:].astype(np.float64) / 255).astype(np.uint8)
    if mode == "LA":
        want, colour = want[..., 0], colour[..., 0]
    got = decoded(tmp_path, im, name, "L" if mode == "LA" else "RGB")
    assert Image.open(tmp_path / name).mode == mode
    assert np.array_equal(got, want)
    assert np.max(got[0, 0]) == 0 and np.array_equal(got[0, 1], colour[0, 1])     # transparent; opaque


# ----------------------------------------------------------------------------- colour spaces


@pytest.mark.parametrize("name", ["a.tif", "a.jpg"])
def test_cmyk_becomes_rgb_without_colour_management(tmp_path, name):
    a = pixels((SIDE, SIDE, 4))
    im = Image.fromarray(a, "CMYK")
    im.save(tmp_path / name, quality=100)
    assert Image.open(tmp_path / name).mode == "CMYK"
    held = np.asarray(Image.open(tmp_path / name)).astype(np.float64)      # a JPEG holds what it decodes to
    got = decode_image(tmp_path / name, SIDE, "RGB").transpose(1, 2, 0)
    want = np.rint((255 - held[..., :3]) * (255 - held[..., 3:]) / 255)   # R = (255 - C)(255 - K) / 255
    assert np.array_equal(got, want)


def test_ycbcr_becomes_rgb_by_jpegs_matrix(tmp_path):
    a = pixels((SIDE, SIDE, 3)).astype(np.float64)
    got = decoded(tmp_path, Image.fromarray(a.astype(np.uint8), "YCbCr"), "a.tif", "RGB")
    assert Image.open(tmp_path / "a.tif").mode == "YCbCr"
    y, cb, cr = a[..., 0], a[..., 1] - 128, a[..., 2] - 128              # full-range BT.601 (JFIF)
    want = np.clip(np.stack([y + 1.402 * cr, y - 0.344136 * cb - 0.714136 * cr, y + 1.772 * cb], -1), 0, 255)
    assert np.abs(got - want).max() <= 1                                   # Pillow's fixed-point arithmetic


def test_lab_is_refused_naming_the_file_and_the_fix(tmp_path):
    Image.fromarray(pixels((SIDE, SIDE, 3)), "LAB").save(tmp_path / "a.tif")
    with pytest.raises(DatasetError, match=r"a\.tif is stored in mode LAB, which this tool does not convert; "
                                           r"save it as 8-bit RGB or grey"):
        decode_image(tmp_path / "a.tif", SIDE, "RGB")


# ----------------------------------------------------------------------------- high bit depths and floats


@pytest.mark.parametrize("name,mode", [("a.png", "I;16"), ("a.tif", "I;16"), ("a.tif", "I;16B")])
def test_16_bit_grey_is_divided_by_257(tmp_path, name, mode):
    v = pixels((SIDE, SIDE), 65536, np.uint16)
    v[0, :4] = [0, 257, 65535, 128]               # 0, 1, 255, and 128 / 257 = 0.498 -> 0
    im = Image.frombytes(mode, (SIDE, SIDE), v.astype(">u2" if mode == "I;16B" else "<u2").tobytes())
    got = decoded(tmp_path, im, name, "L")
    assert Image.open(tmp_path / name).mode.startswith("I;16")
    assert np.array_equal(got, np.rint(v / 257)) and list(got[0, :4]) == [0, 1, 255, 0]


def test_a_16_bit_pgm_opens_as_mode_i_and_is_divided_by_257(tmp_path):
    v = pixels((SIDE, SIDE), 65536, np.uint16)
    (tmp_path / "a.pgm").write_bytes(f"P5\n{SIDE} {SIDE}\n65535\n".encode() + v.astype(">u2").tobytes())
    assert Image.open(tmp_path / "a.pgm").mode == "I"
    assert np.array_equal(decode_image(tmp_path / "a.pgm", SIDE, "L")[0], np.rint(v / 257))


def test_32_bit_integers_in_the_16_bit_range_are_divided_by_257_and_others_refused(tmp_path):
    v = pixels((SIDE, SIDE), 65536, np.int32)
    assert np.array_equal(decoded(tmp_path, Image.fromarray(v), "a.tif", "L"), np.rint(v / 257))
    assert Image.open(tmp_path / "a.tif").mode == "I"
    v[2, 3] = 70000
    Image.fromarray(v).save(tmp_path / "b.tif")
    with pytest.raises(DatasetError, match=r"b\.tif \(mode I, integer\) holds values in \[\d+, 70000\], outside the "
                                           r"16-bit range 0\.\.65535 .*; save it as 8- or 16-bit grey"):
        decode_image(tmp_path / "b.tif", SIDE, "L")
    v[2, 3] = -1
    Image.fromarray(v).save(tmp_path / "c.tif")
    with pytest.raises(DatasetError, match=r"c\.tif \(mode I, integer\) holds values in \[-1, "):
        decode_image(tmp_path / "c.tif", SIDE, "L")


def png16_rgb(path, v: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG (Pillow writes none), from (H, W, 3) uint16."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w, _ = v.shape
    rows = b"".join(b"\0" + v[i].astype(">u2").tobytes() for i in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_16_bit_colour_png_is_read_by_pillow_as_its_high_byte(tmp_path):
    v = pixels((SIDE, SIDE, 3), 65536, np.uint16)
    png16_rgb(tmp_path / "a.png", v)
    got = decode_image(tmp_path / "a.png", SIDE, "RGB").transpose(1, 2, 0)
    assert np.array_equal(got, v // 256) and np.abs(got - v / 257).max() <= 1


def test_floats_in_0_1_are_times_255(tmp_path):
    v = RNG.random((SIDE, SIDE)).astype(np.float32)
    v[0, :3] = [0.0, 1.0, 0.5]
    got = decoded(tmp_path, Image.fromarray(v), "a.tif", "L")
    assert Image.open(tmp_path / "a.tif").mode == "F"
    assert np.array_equal(got, np.rint(v.astype(np.float64) * 255)) and list(got[0, :3]) == [0, 255, 128]


@pytest.mark.parametrize("bad,says", [(float("nan"), r"holds NaN or infinite values; replace them"),
                                      (float("inf"), r"holds NaN or infinite values"),
                                      (255.0, r"holds values in \[0, 255\]; float images must hold values in "
                                              r"\[0, 1\]: scale it to \[0, 1\] or save it as 8- or 16-bit"),
                                      (-0.5, r"holds values in \[-0\.5, ")])
def test_floats_that_are_not_in_0_1_are_refused(tmp_path, bad, says):
    v = RNG.random((SIDE, SIDE)).astype(np.float32)
    v[0, 0], v[1, 1] = 0.0, bad
    Image.fromarray(v).save(tmp_path / "a.tif")
    with pytest.raises(DatasetError, match=r"image .*a\.tif \(mode F, float\) " + says):
        decode_image(tmp_path / "a.tif", SIDE, "L")


# ----------------------------------------------------------------------------- orientation and frames


# EXIF orientation (tag 274) -> how a viewer shows the stored array (JEITA CP-3451, the Orientation tag)
ORIENTATIONS = {1: lambda a: a, 2: np.fliplr, 3: lambda a: np.rot90(a, 2), 4: np.flipud, 5: lambda a: a.T,
                6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 2).T, 8: lambda a: np.rot90(a, 1)}


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("name", ["a.png", "a.jpg"])
def test_the_exif_orientation_is_applied(tmp_path, orientation, name):
    a = np.zeros((8, 8), np.uint8)
    a[:4, :4], a[:4, 4:], a[4:, :4] = 60, 120, 180       # quadrants a JPEG keeps (8x8 blocks, flat)
    exif = Image.Exif()
    exif[274] = orientation
    Image.fromarray(a).save(tmp_path / name, exif=exif, quality=100)
    got = decode_image(tmp_path / name, 8, "L")[0].astype(int)
    assert np.abs(got - ORIENTATIONS[orientation](a)).max() <= 2     # the JPEG's rounding at most


@pytest.mark.parametrize("name", ["a.gif", "a.tif", "a.png", "a.webp"])
def test_several_frames_give_the_first_one(tmp_path, name):
    frames = [pixels((SIDE, SIDE, 3)) for _ in range(3)]
    ims = [Image.fromarray(f) for f in frames]
    save = {"lossless": True} if name.endswith(".webp") else {}
    if name.endswith(".gif"):                       # a GIF is a palette image: build the frames from one palette
        frames = [f // 64 * 85 for f in frames]     # 4 levels a channel: 64 colours
        ims = [Image.fromarray(f) for f in frames]
    ims[0].save(tmp_path / name, save_all=True, append_images=ims[1:], **save)
    assert Image.open(tmp_path / name).n_frames == 3
    assert np.array_equal(decode_image(tmp_path / name, SIDE, "RGB").transpose(1, 2, 0), frames[0])


def test_an_image_folder_says_which_files_hold_several_frames_and_which_files_it_skips(tmp_path):
    for split in ("train", "val"):
        for c, level in (("a", 40), ("b", 200)):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("L", (SIDE, SIDE), level).save(tmp_path / split / c / "0.png")
    pages = [Image.new("L", (SIDE, SIDE), v) for v in (90, 10)]
    pages[0].save(tmp_path / "train" / "a" / "1.tif", save_all=True, append_images=pages[1:])
    (tmp_path / "train" / "b" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "b" / "1.jp2").write_bytes(b"a format not read")
    with pytest.warns(UserWarning) as said:
        ds = load_dataset(f"imagefolder:{tmp_path}", cache=False)
    text = "\n".join(str(w.message) for w in said)
    assert "1 of 5 image files hold several frames" in text and "train/a/1.tif); the first frame of each" in text
    assert re.search(r"train: 2 files are skipped, not having an image suffix .*: train/b/1\.jp2, train/b/notes\.txt", text)
    assert ds.channels == 1 and len(ds.x_train) == 3
    assert sorted(int(x.float().mean()) for x in ds.x_train) == [40, 90, 200]


def test_a_folder_of_16_bit_and_float_files_loads_grey_with_their_pixels_and_again_from_the_cache(tmp_path):
    want = {}
    for split in ("train", "val"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            v = pixels((SIDE, SIDE), 65536, np.uint16)
            Image.frombytes("I;16", (SIDE, SIDE), v.astype("<u2").tobytes()).save(tmp_path / split / c / "0.png")
            f = RNG.random((SIDE, SIDE)).astype(np.float32)
            Image.fromarray(f).save(tmp_path / split / c / "1.tif")
            want[split, c] = [np.rint(v / 257), np.rint(f.astype(np.float64) * 255)]
    for _ in range(2):                               # decoded, then from the cache
        ds = load_dataset(f"imagefolder:{tmp_path}")
        assert ds.channels == 1
        for split, x in (("train", ds.x_train), ("val", ds.x_test)):
            assert np.array_equal(x[:, 0].numpy(), np.stack([*want[split, "a"], *want[split, "b"]]))

