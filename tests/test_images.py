"""The one image loader (trsllava.images.load_rgb): every mode, bit depth, orientation, page count,
size and broken file it meets becomes 8-bit RGB pixels or a one-line TrsllavaError naming the file.
Test images are built here with PIL, numpy, pypng and tifffile; the C04/C05/C06 case files are in
tests/data/cases/."""

import logging
from pathlib import Path

import numpy as np
import png
import pytest
import tifffile
from PIL import Image

from trsllava.errors import TrsllavaError
from trsllava.images import LOADER_VERSION, ImageLoader, ImageOptions, load_rgb, padded_size

CASES = Path(__file__).resolve().parent / "data" / "cases"
NO_PADDING = ImageOptions(min_side=1, max_aspect=1000)  # the small test images keep their size


def pixels(path, **kwargs) -> np.ndarray:
    kwargs.setdefault("options", NO_PADDING)
    image = load_rgb(path, **kwargs)
    assert image.mode == "RGB"
    return np.asarray(image)


def white_share(array: np.ndarray) -> float:
    return float((array == 255).all(axis=-1).mean())


def write_png16(path: Path, array: np.ndarray, alpha: bool = False) -> Path:
    """A 16-bit PNG (grey, grey + alpha, RGB or RGBA) through pypng."""
    height, width, planes = array.shape
    writer = png.Writer(width, height, greyscale=planes in (1, 2), alpha=alpha, bitdepth=16)
    with open(path, "wb") as handle:
        writer.write(handle, array.reshape(height, width * planes).tolist())
    return path


# -- C04: high bit depth -------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["pan_12bit.tif", "pan_12bit.png"])
def test_c04_12bit_in_16_is_the_sensors_8bit_picture(name):
    reference = np.asarray(Image.open(CASES / "C04" / "pan_8bit.png"))  # the same scene as 8 bits (v >> 4)
    loaded = pixels(CASES / "C04" / name)
    assert white_share(loaded) < 0.05  # Pillow's own convert("RGB") makes it 100% white
    assert np.array_equal(loaded[..., 0], loaded[..., 2])  # grey stays grey
    assert np.abs(loaded[..., 0].astype(int) - reference).max() <= 1
    # the documented formula: v * 255 / 4095 (the largest value, 3500, needs 12 bits)
    raw = np.asarray(Image.open(CASES / "C04" / name)).astype(np.float64)
    assert np.array_equal(loaded[..., 0], np.rint(raw * 255 / 4095).astype(np.uint8))


def test_c04_percentile_stretch_cuts_at_2_and_98_percent():
    raw = np.asarray(Image.open(CASES / "C04" / "pan_12bit.png")).astype(np.float64)
    loaded = pixels(CASES / "C04" / "pan_12bit.png", options=ImageOptions(stretch="percentile", min_side=1))
    low, high = np.percentile(raw, [2, 98])
    expected = np.rint(np.clip((raw - low) / (high - low), 0, 1) * 255).astype(np.uint8)
    assert np.array_equal(loaded[..., 0], expected)
    # the road and roof share the top value (8.3% of the scene): the percentile stretch whitens them,
    # which is why bit_depth is the default
    assert white_share(loaded) == pytest.approx((raw == raw.max()).mean())


def test_16bit_colour_png_keeps_all_its_bits(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(300, 3500, (6, 7, 3)).astype(np.uint16)
    path = write_png16(tmp_path / "rgb16.png", data)
    assert np.asarray(Image.open(path)).max() <= 13  # what Pillow alone gives: the high byte
    assert np.array_equal(pixels(path), np.rint(data.astype(np.float64) * 255 / 4095).astype(np.uint8))


def test_16bit_rgba_png_is_composited_on_black(tmp_path):
    data = np.zeros((2, 2, 4), dtype=np.uint16)
    data[..., :3] = 4095
    data[..., 3] = [[65535, 0], [32768, 65535]]
    loaded = pixels(write_png16(tmp_path / "rgba16.png", data, alpha=True))
    assert loaded[0, 0].tolist() == [255, 255, 255] and loaded[0, 1].tolist() == [0, 0, 0]
    assert loaded[1, 0].tolist() == [128] * 3  # 255 x 32768 / 65535


def test_multiband_16bit_tiff_first_three_bands(tmp_path, caplog):
    rng = np.random.default_rng(1)
    data = rng.integers(0, 2**14, (5, 6, 4)).astype(np.uint16)
    data[0, 0, 0] = 2**14 - 1
    path = tmp_path / "ms.tif"
    tifffile.imwrite(path, data, photometric="minisblack", planarconfig="contig")  # 4 samples per pixel
    with caplog.at_level(logging.INFO, logger="trsllava.images"):
        loaded = pixels(path)
    assert np.array_equal(loaded, np.rint(data[..., :3].astype(np.float64) * 255 / (2**14 - 1)).astype(np.uint8))
    assert "4 bands without alpha" in caplog.text
    planar = tmp_path / "planar.tif"
    tifffile.imwrite(planar, np.moveaxis(data[..., :3], -1, 0), photometric="rgb", planarconfig="separate")
    assert np.array_equal(pixels(planar), loaded)


def test_float_and_signed_data(tmp_path):
    unit = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    Image.fromarray(unit).save(tmp_path / "unit.tif")  # mode F
    assert np.array_equal(pixels(tmp_path / "unit.tif")[..., 0], np.rint(unit * 255).astype(np.uint8))
    # floats outside [0, 1] (radiance, heights) and negative integers: the percentile stretch
    wide = np.linspace(-5, 1000, 100, dtype=np.float32).reshape(10, 10)
    wide[0, 0] = np.nan  # no-data -> 0
    Image.fromarray(wide).save(tmp_path / "wide.tif")
    loaded = pixels(tmp_path / "wide.tif")[..., 0]
    values = np.where(np.isfinite(wide), wide, 0).astype(np.float64)
    low, high = np.percentile(values, [2, 98])
    assert np.array_equal(loaded, np.rint(np.clip((values - low) / (high - low), 0, 1) * 255).astype(np.uint8))
    signed = np.arange(-50, 50, dtype=np.int32).reshape(10, 10)
    Image.fromarray(signed).save(tmp_path / "signed.tif")  # mode I
    assert pixels(tmp_path / "signed.tif")[..., 0].min() == 0 and pixels(tmp_path / "signed.tif")[..., 0].max() == 255


def test_8bit_data_in_a_16bit_container_is_unchanged(tmp_path):
    data = np.arange(0, 256, dtype=np.uint16).reshape(16, 16)
    Image.fromarray(data).save(tmp_path / "eight.png")  # mode I;16
    assert np.array_equal(pixels(tmp_path / "eight.png")[..., 0], data.astype(np.uint8))


# -- modes ----------------------------------------------------------------------------------------

def _rgb_square():
    data = np.zeros((4, 4, 3), dtype=np.uint8)
    data[:2, :2] = (200, 10, 10)
    data[2:, 2:] = (10, 10, 200)
    return Image.fromarray(data, "RGB")


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("L", ".png"), ("1", ".png"), ("P", ".png"),
                                          ("CMYK", ".tif"), ("CMYK", ".jpg"), ("YCbCr", ".jpg"), ("RGB", ".webp"),
                                          ("RGB", ".bmp"), ("P", ".gif")])
def test_modes_become_the_same_rgb(tmp_path, mode, suffix):
    source = _rgb_square()
    image = source.convert(mode)
    path = tmp_path / f"{mode}{suffix}"
    image.save(path, **({"quality": 100} if suffix == ".jpg" else {"lossless": True} if suffix == ".webp" else {}))
    expected = np.asarray(Image.open(path).convert("RGB"))  # Pillow's own conversion is right for these modes
    loaded = pixels(path)
    assert loaded.shape == (4, 4, 3) and np.array_equal(loaded, expected)
    if suffix in (".png", ".tif", ".webp", ".bmp") and mode in ("RGB", "CMYK"):  # P: the web palette's colours
        assert np.abs(loaded.astype(int) - np.asarray(source)).max() <= 2


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])  # (Pillow cannot write PA files)
def test_transparency_is_composited_on_black(tmp_path, mode):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[255, 0], [255, 0]]
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":
        image = Image.fromarray(rgba[..., :3], "RGB").convert("P")
        image.info["transparency"] = image.getpixel((1, 0))  # the index of the colour at (1, 0)
        rgba[..., 3] = 0  # every pixel has that colour
    path = tmp_path / f"{mode}.png"
    image.save(path, **({"transparency": image.info["transparency"]} if mode == "P" else {}))
    loaded = pixels(path)
    visible = rgba[..., 3] == 255
    assert (loaded[visible] == 200).all() and (loaded[~visible] == 0).all()


def test_mode_i16_and_i_and_f_from_pillow(tmp_path):
    data = (np.arange(20, dtype=np.uint16) * 200).reshape(4, 5)  # up to 3800: 12 bits
    for mode, array, suffix in (("I;16", data, ".png"), ("I;16", data, ".tif"), ("I", data.astype(np.int32), ".tif"),
                                ("F", data.astype(np.float32), ".tif")):
        path = tmp_path / f"{mode.replace(';', '')}{suffix}"
        image = Image.fromarray(array)
        assert image.mode == mode
        image.save(path)
        expected = np.rint(data.astype(np.float64) * 255 / 4095).astype(np.uint8) if mode != "F" else None
        loaded = pixels(path)[..., 0]
        if expected is not None:
            assert np.array_equal(loaded, expected), mode
        else:  # floats above 1 have no bit depth: percentile stretch, full range
            assert loaded.min() == 0 and loaded.max() == 255


# -- orientation, pages ---------------------------------------------------------------------------

def test_exif_orientation_is_applied(tmp_path):
    data = np.zeros((20, 40, 3), dtype=np.uint8)
    data[:, :10] = 255  # a white band on the left
    exif = Image.Exif()
    exif[274] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    Image.fromarray(data).save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    loaded = pixels(tmp_path / "rotated.jpg")
    assert loaded.shape == (40, 20, 3)
    assert loaded[:10].mean() > 240 and loaded[15:].mean() < 15  # the band is now at the top
    # the same for the tifffile path (16-bit colour): tag 274 applied by the loader
    tif = tmp_path / "rotated16.tif"
    tifffile.imwrite(tif, data.astype(np.uint16) * 16, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    assert np.array_equal(pixels(tif) > 127, loaded > 127)


def test_multipage_tiff_first_page_said_in_the_log(tmp_path, caplog):
    first = Image.fromarray(np.full((8, 8, 3), 50, dtype=np.uint8))
    second = Image.fromarray(np.full((8, 8, 3), 220, dtype=np.uint8))
    first.save(tmp_path / "pages.tif", save_all=True, append_images=[second])
    with caplog.at_level(logging.INFO, logger="trsllava.images"):
        assert (pixels(tmp_path / "pages.tif") == 50).all()
    assert "2 pages; using the first" in caplog.text
    caplog.clear()
    stack = np.stack([np.full((8, 8, 3), 1000, np.uint16), np.full((8, 8, 3), 4000, np.uint16)])
    tifffile.imwrite(tmp_path / "pages16.tif", stack, photometric="rgb")
    with caplog.at_level(logging.INFO, logger="trsllava.images"):
        assert (pixels(tmp_path / "pages16.tif") == round(1000 * 255 / 1023)).all()  # 1000 needs 10 bits
    assert "2 pages; using the first" in caplog.text


# -- size ---------------------------------------------------------------------------------------

def test_large_scene_downscaled_or_refused_never_a_bomb_error(tmp_path, monkeypatch):
    Image.fromarray(np.full((300, 200, 3), 90, dtype=np.uint8)).save(tmp_path / "big.png")
    Image.fromarray(np.full((300, 200, 3), 90, dtype=np.uint8)).save(tmp_path / "big.jpg", quality=95)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow alone: DecompressionBombError above 2000
    with pytest.raises(Image.DecompressionBombError):
        Image.open(tmp_path / "big.png")
    assert pixels(tmp_path / "big.png").shape == (300, 200, 3)  # our cap (default 100 MP) replaces Pillow's
    assert Image.MAX_IMAGE_PIXELS == 1000  # and Pillow's setting is left as it was
    for name in ("big.png", "big.jpg"):
        small = load_rgb(tmp_path / name, options=ImageOptions(max_pixels=6000))
        assert small.width * small.height <= 6000 and small.width / small.height == pytest.approx(200 / 300, rel=0.05)
        with pytest.raises(TrsllavaError) as refused:
            load_rgb(tmp_path / name, options=ImageOptions(max_pixels=6000, oversize="refuse"))
        message = str(refused.value)
        assert "\n" not in message and name in message and "200 x 300 pixels (60,000)" in message
        assert "images.max_pixels (6,000)" in message


def test_oversize_16bit_png_and_tiff_are_refused_before_decoding(tmp_path):
    data = np.full((60, 50, 3), 1000, dtype=np.uint16)
    write_png16(tmp_path / "big16.png", data)
    tifffile.imwrite(tmp_path / "big16.tif", data, photometric="rgb")
    for name in ("big16.png", "big16.tif"):
        with pytest.raises(TrsllavaError, match=r"50 x 60 pixels \(3,000\) exceed images.max_pixels \(1,000\)"):
            load_rgb(tmp_path / name, options=ImageOptions(max_pixels=1000, oversize="refuse"))
        small = load_rgb(tmp_path / name, options=ImageOptions(max_pixels=1000, min_side=1))
        assert small.width * small.height <= 1000 and (np.asarray(small) == round(1000 * 255 / 1023)).all()


def test_max_side_caps_the_longer_side():
    image = load_rgb(CASES / "C05" / "ok_64x64.png", max_side=32)
    assert image.size == (32, 32)


@pytest.mark.parametrize("name, size", [("dot_1x1.png", (32, 32)), ("sliver_499x1.png", (499, 32)),
                                        ("strip_22x3.png", (32, 32)), ("ok_64x64.png", (64, 64))])
def test_c05_degenerate_sizes_are_padded(name, size):
    original = np.asarray(Image.open(CASES / "C05" / name).convert("RGB"))
    loaded = pixels(CASES / "C05" / name, options=ImageOptions())  # the defaults: min_side 32, max_aspect 20
    assert loaded.shape[:2] == (size[1], size[0])
    top, left = (size[1] - original.shape[0]) // 2, (size[0] - original.shape[1]) // 2
    assert np.array_equal(loaded[top:top + original.shape[0], left:left + original.shape[1]], original)  # centred
    padding = np.ones(loaded.shape[:2], dtype=bool)
    padding[top:top + original.shape[0], left:left + original.shape[1]] = False
    assert (loaded[padding] == 0).all()  # black


def test_padded_size_rule():
    options = ImageOptions(min_side=32, max_aspect=20)
    assert padded_size(1, 1, options) == (32, 32)
    assert padded_size(499, 1, options) == (499, 32)
    assert padded_size(2000, 50, options) == (2000, 100)  # aspect 40 -> 20
    assert padded_size(64, 64, options) == (64, 64) and padded_size(640, 32, options) == (640, 32)


# -- unreadable files -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, reason", [("harbor_2.jpg", "truncated or corrupt"), ("notes.jpg", "not an image file"),
                                          ("missing.jpg", "file not found")])
def test_c06_unreadable_files_are_one_line_naming_the_file(name, reason):
    with pytest.raises(TrsllavaError) as error:
        load_rgb(CASES / "C06" / name)
    message = str(error.value)
    assert message.startswith(f"image {CASES / 'C06' / name}: ") and reason in message and "\n" not in message


def test_empty_and_garbage_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "half.png").write_bytes((CASES / "C05" / "ok_64x64.png").read_bytes()[:3000])
    (tmp_path / "half.tif").write_bytes((CASES / "C04" / "pan_12bit.tif").read_bytes()[:5000])
    for name in ("empty.png", "half.png", "half.tif"):
        with pytest.raises(TrsllavaError, match=f"image {tmp_path / name}: "):
            load_rgb(tmp_path / name)


# -- options and the cache key's part -------------------------------------------------------------

def test_options_from_config_and_fingerprint():
    assert ImageOptions.from_config({}) == ImageOptions()
    options = ImageOptions.from_config({"images": {"stretch": "percentile", "percentiles": [1, 99], "max_pixels": 10}})
    assert options.percentiles == (1.0, 99.0) and options.max_pixels == 10
    for bad, key in (({"stretch": "log"}, "images.stretch"), ({"oversize": "crop"}, "images.oversize"),
                     ({"percentiles": [98, 2]}, "images.percentiles"), ({"colour": 1}, "unknown key")):
        with pytest.raises(TrsllavaError, match=key):
            ImageOptions.from_config({"images": bad})
    base = ImageLoader().fingerprint()
    assert base["loader"] == LOADER_VERSION
    assert len({str(base), str(ImageLoader(max_side=512).fingerprint()),
                str(ImageLoader(ImageOptions(stretch="percentile")).fingerprint())}) == 3


def test_c05_padding_is_what_qwen2_vl_needs():
    """Qwen2-VL's image processor (as transformers and vLLM run it; no weights needed) refuses an
    aspect ratio over 200: the raw 499 x 1 sliver fails, the loaded (padded) one is processed."""
    from transformers import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor()
    raw = Image.open(CASES / "C05" / "sliver_499x1.png").convert("RGB")
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        processor(images=[raw], return_tensors="np")
    for name in ("sliver_499x1.png", "dot_1x1.png", "strip_22x3.png", "ok_64x64.png"):
        out = processor(images=[load_rgb(CASES / "C05" / name)], return_tensors="np")
        assert out["pixel_values"].shape[0] > 0 and out["image_grid_thw"].shape == (1, 3)
