"""Property test: random small npz arrays (shapes, dtypes, channel orders, labels) and image folders (files of random
Pillow modes and sizes) fed to `minimaxdd select` and `minimaxdd evaluate`. Each run ends in a clean refusal (exit 2,
the command's one error line, no traceback, no --out) exactly when the input breaks the rules the loaders document
(sources._npz_images, image_folders.decode_image), and otherwise in a set whose pixels are the input's, decoded by
those rules independently here, which `evaluate` then takes."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minimaxdd.cli import main

# in the test extras (pyproject.toml); skipped, and said by -ra, where it is not installed
hypothesis = pytest.importorskip("hypothesis", reason="the property tests need hypothesis: pip install hypothesis")
st = pytest.importorskip("hypothesis.strategies")
given = hypothesis.given

FAST = ["--precision", "fp32", "--device", "cpu"]
# ours: about 0.2 s an example (select, then a 1-epoch evaluate), the two tests under 30 s on 2 cores
EXAMPLES = hypothesis.settings(max_examples=50, deadline=None, database=None,
                               suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:                # argparse's own errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def select_then_evaluate(spec: str, tmp: Path, expected: tuple[np.ndarray, np.ndarray] | None, capsys) -> None:
    """`select` IPC 1 from `spec`: refused cleanly when `expected` is None, else a set whose every image is one
    of the expected (N, C, H, W) uint8 training images of its class, in data.pt and in its PNGs; then `evaluate`."""
    out = tmp / "set"
    rc, stdout, err = run(["select", "--method", "random", "--ipc", "1", "--real", spec, "--out", str(out)], capsys)
    assert "Traceback" not in stdout + err
    if expected is None:
        assert rc == 2 and err.startswith("minimaxdd select: error: ") and err.count("\n") == 1, err
        assert not out.exists()
        return
    assert rc == 0, err
    x, y = expected
    d = torch.load(out / "data.pt", weights_only=True)
    classes = sorted(set(y.tolist()))
    assert d["labels"].tolist() == classes and d["images"].shape == (len(classes), *x.shape[1:])
    for image, label in zip(d["images"].numpy(), d["labels"].tolist()):
        assert any(np.array_equal(image, e) for e in x[y == label]), f"class {label}: not an input image"
    pngs = sorted((out / "images").rglob("*.png"))
    assert len(pngs) == len(classes)
    for png, image in zip(pngs, d["images"].numpy()):          # class folders in label order, one image each
        a = np.asarray(Image.open(png))
        assert np.array_equal(a if a.ndim == 3 else a[..., None], image.transpose(1, 2, 0))
    rc, stdout, err = run(["evaluate", str(out), "--real", spec, "--epochs", "1", "--repeats", "1", *FAST], capsys)
    assert rc == 0 and "Traceback" not in stdout + err and "per-class accuracy" in stdout, err


# ----------------------------------------------------------------------------- npz arrays


# What breaks an npz (one at a time; None: nothing)
NPZ_FAULTS = ["channels", "dtype", "nan", "inf", "above 1", "below 0", "float labels", "empty class", "no test images"]


@st.composite
def npz_inputs(draw):
    """(arrays for np.savez, the expected uint8 (N, C, H, W) training images and labels, or None: refused)."""
    fault = draw(st.none() | st.sampled_from(NPZ_FAULTS))
    k, per = draw(st.integers(2, 3)), draw(st.integers(1, 2))
    c = draw(st.sampled_from([2, 5] if fault == "channels" else [1, 3, 4]))
    layout = draw(st.sampled_from(["NCHW", "NHWC"] + (["NHW"] if c == 1 else [])))
    # (N, 1, 3 or 4, H, C) reads as [N, C, H, W]: channels-last images of side 1, 3 or 4 are ambiguous, so not drawn
    side = draw(st.sampled_from([2, 5] if layout == "NHWC" else [1, 2, 3, 4, 5]))
    floats = ["float16", "float32", "float64"]
    dtype = draw(st.sampled_from(["int32", "uint16", "int8", "bool"] if fault == "dtype" else
                                 floats if fault in ("nan", "inf", "above 1", "below 0") else ["uint8", *floats]))
    label_dtype = draw(st.sampled_from(["int64", "int32", "uint8"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = {}
    for split, n in (("train", k * per), ("test", 0 if fault == "no test images" else k)):
        v = rng.integers(0, 256, (n, c, side, side)).astype(np.uint8)             # the images, [N, C, H, W]
        if dtype.startswith("float"):
            stored = np.clip(v / 255 + rng.uniform(-0.4, 0.4, v.shape) / 255, 0, 1).astype(dtype)
            v = np.rint(stored.astype(np.float64) * 255).astype(np.uint8)         # what the floats hold
            if fault in ("nan", "inf", "above 1", "below 0") and split == "train":
                stored.flat[rng.integers(stored.size)] = {"nan": np.nan, "inf": np.inf, "above 1": 1.5,
                                                          "below 0": -0.25}[fault]
        else:
            stored = v.astype(dtype)
        arrays[f"x_{split}"] = {"NCHW": stored, "NHWC": stored.transpose(0, 2, 3, 1), "NHW": stored[:, 0]}[layout]
        y = np.tile(np.arange(k), n // k)
        if split == "train" and fault == "empty class":
            y[y == 1] = 0
        arrays[f"y_{split}"] = y.astype(float if fault == "float labels" else label_dtype)
        if split == "train":
            expected = (v, y)
    return arrays, expected if fault is None else None


@EXAMPLES
@given(npz_inputs())
def test_random_npz_arrays_are_refused_cleanly_or_selected_and_evaluated_as_they_are(capsys, case):
    arrays, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / "d.npz", **arrays)
        select_then_evaluate(f"npz:{tmp}/d.npz", Path(tmp), expected, capsys)


# ----------------------------------------------------------------------------- image folders

GREY = ("1", "L", "LA", "I;16", "I", "F")
MODES = (*GREY, "P", "P transparent", "RGB", "RGBA", "CMYK", "multi-frame")
BAD = ("F above 1", "I above 16 bits", "LAB", "truncated")


def image_file(path: Path, mode: str, side: int, rng: np.random.Generator) -> np.ndarray | None:
    """Write a `side`-px square image of `mode` at `path`; return its pixels by the decoder's rules, (H, W) for a
    grey mode and (H, W, 3) otherwise, or None for a file the decoder must refuse."""
    u8 = rng.integers(0, 256, (side, side, 4)).astype(np.uint16)
    if mode in ("1", "L", "RGB"):
        a = {"1": (u8[..., 0] >= 128).astype(np.uint8) * 255, "L": u8[..., 0], "RGB": u8[..., :3]}[mode].astype(np.uint8)
        Image.fromarray(a).convert(mode).save(path.with_suffix(".png"))
        return a
    if mode in ("LA", "RGBA"):
        a = u8[..., :2] if mode == "LA" else u8
        Image.fromarray(a.astype(np.uint8), mode).save(path.with_suffix(".png"))
        over_black = (a[..., :-1] * a[..., -1:] + 127) // 255
        return over_black.astype(np.uint8).squeeze(-1) if mode == "LA" else over_black.astype(np.uint8)
    if mode in ("I;16", "I", "I above 16 bits"):
        v = rng.integers(0, 65536, (side, side))
        if mode == "I;16":
            Image.frombytes("I;16", (side, side), v.astype("<u2").tobytes()).save(path.with_suffix(".png"))
        else:
            v.flat[0] = 70000 if mode == "I above 16 bits" else v.flat[0]
            Image.fromarray(v.astype(np.int32)).save(path.with_suffix(".tif"))
        return None if mode == "I above 16 bits" else np.rint(v / 257).astype(np.uint8)
    if mode in ("F", "F above 1"):
        f = rng.random((side, side)).astype(np.float32) * (255 if mode == "F above 1" else 1)
        Image.fromarray(f).save(path.with_suffix(".tif"))
        return None if f.max() > 1 else np.rint(f.astype(np.float64) * 255).astype(np.uint8)
    if mode in ("P", "P transparent"):
        palette, index = rng.integers(0, 256, (8, 3)).astype(np.uint8), rng.integers(0, 8, (side, side))
        im = Image.fromarray(index.astype(np.uint8), "P")
        im.putpalette(palette.reshape(-1).tolist())
        im.save(path.with_suffix(".png"), **({"transparency": 0} if mode == "P transparent" else {}))
        return np.where((index == 0)[..., None], 0, palette[index]) if mode == "P transparent" else palette[index]
    if mode == "CMYK":
        Image.fromarray(u8.astype(np.uint8), "CMYK").save(path.with_suffix(".tif"))
        return np.rint((255 - u8[..., :3]) * (255 - u8[..., 3:]) / 255).astype(np.uint8)
    if mode == "multi-frame":
        frames = [rng.integers(0, 4, (side, side, 3)).astype(np.uint8) * 85 for _ in range(2)]   # 64 colours: a GIF
        Image.fromarray(frames[0]).save(path.with_suffix(".gif"), save_all=True,
                                        append_images=[Image.fromarray(frames[1])])
        return frames[0]
    if mode == "LAB":
        Image.fromarray(u8[..., :3].astype(np.uint8), "LAB").save(path.with_suffix(".tif"))
        return None
    Image.fromarray(u8[..., :3].astype(np.uint8)).save(path.with_suffix(".png"))             # truncated
    data = path.with_suffix(".png").read_bytes()
    path.with_suffix(".png").write_bytes(data[:len(data) // 2])
    return None


@st.composite
def folder_inputs(draw):
    """(files: [(split, class, name, mode)], side, seed)."""
    side, seed = draw(st.integers(1, 6)), draw(st.integers(0, 2**32 - 1))
    modes = st.sampled_from(MODES + BAD) if draw(st.booleans()) else st.sampled_from(MODES)
    files = [(split, c, i, draw(modes)) for split in ("train", "val") for c in ("a", "b")
             for i in range(draw(st.integers(1, 2)))]
    return files, side, seed


@pytest.mark.filterwarnings("ignore:.*image files hold several frames:UserWarning")   # said, and meant
@EXAMPLES
@given(folder_inputs())
def test_random_image_folders_are_refused_cleanly_or_selected_and_evaluated_with_their_pixels(capsys, case):
    files, side, seed = case
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        root, pixels = Path(tmp) / "data", {}
        for split, c, i, mode in files:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            pixels[split, c, i] = image_file(root / split / c / str(i), mode, side, rng)
        expected = None
        if all(p is not None for p in pixels.values()):
            grey = all(mode in GREY for *_, mode in files)
            train = [(p if grey else (p if p.ndim == 3 else np.stack([p] * 3, -1)), c)
                     for (split, c, _), p in pixels.items() if split == "train"]
            expected = (np.stack([p[None] if grey else p.transpose(2, 0, 1) for p, _ in train]),
                        np.array([["a", "b"].index(c) for _, c in train]))
        select_then_evaluate(f"imagefolder:{root}", Path(tmp), expected, capsys)
