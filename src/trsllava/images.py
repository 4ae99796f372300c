"""One image loader for every consumer: a file in, the 8-bit RGB pixels a model or a page gets out.

Every path that looks at pixels goes through ``load_rgb``: the transformers and vLLM captioning
inputs, the OpenAI payload (re-encoded as PNG from these pixels, never the raw file), the CLIP
baseline, the search gallery's thumbnails; the captioning cache key covers the loader's version
and options (``ImageOptions.fingerprint``), so a change of what the model sees invalidates the
captions computed from the old pixels. What it does, in order:

1. **Reading.** Pillow for everything it reads losslessly. Pillow silently keeps only the high
   byte of 16-bit colour PNGs and 16-bit multi-band TIFFs (a 12-bit scene turns nearly black) and
   misreads some multi-band TIFFs, so those go to ``pypng`` (16-bit colour PNG) and ``tifffile``
   (TIFF with more than 8 bits and more than one sample per pixel, or any TIFF Pillow cannot open).
   Multi-page files (TIFF, GIF, MPO): the first page, said in the log.
2. **Size cap.** An image over ``max_pixels`` is downscaled to fit (``oversize: downscale``; JPEGs are
   decoded at a reduced scale) or refused in one line naming the file and its size
   (``oversize: refuse``). Pillow's own decompression-bomb error never escapes: the cap replaces it.
3. **EXIF orientation** (tag 274) is applied, as a viewer shows the image.
4. **Bit depth.** Data with more than 8 bits (I;16*, I, F modes, 16-bit PNG/TIFF) become 8 bits by
   ``stretch``:
   - ``bit_depth`` (default): linear by the image's significant bits, ``v * 255 / (2**b - 1)`` with
     ``b`` the bit length of its largest value (at least 8). A 12-bit sensor's data in a 16-bit
     container (values up to 4095) become exactly what the sensor's 8-bit product (``v >> 4``)
     shows; nothing saturates, brightness relations are kept. Floats within [0, 1] are scaled by
     255; other floats and negative integers (no bit depth) get the percentile stretch.
   - ``percentile``: each band cut at its ``percentiles`` (default 2 and 98: the cumulative count
     cut of QGIS's default rendering) and stretched linearly to 0..255. More contrast, but the
     brightest ``100 - p_high`` % (more where the top value is shared by many pixels) turn white.
   Non-finite float values (no-data) become 0.
5. **Modes.** 1, L, P, CMYK, YCbCr, LAB, HSV: Pillow's conversion to RGB. Transparency (RGBA, LA,
   PA, P with a transparent index, 2- and 4-band 16-bit data with alpha) is composited onto black,
   the no-data colour of RS products. More than 3 bands without alpha (multispectral): the first
   three are taken as R, G, B (reorder bands beforehand for another layout), said in the log.
6. **Longer side** capped at ``max_side`` when the consumer asks (bicubic, aspect kept).
7. **Degenerate sizes.** An image whose shorter side is under ``min_side`` pixels, or whose aspect
   ratio exceeds ``max_aspect``, is padded with black, centred, to the smallest size that satisfies
   both (1 x 1 -> 32 x 32; 499 x 1 -> 499 x 32 with the defaults): vision processors reject
   such shapes (Qwen2-VL needs sides of 28 px and an aspect ratio under 200) or blow them up.

A file that cannot become pixels (missing, truncated, not an image, an unsupported layout) raises
``TrsllavaError`` with one line ``image <path>: <reason>``; the captioning shard and the CLIP
baseline list such images as failures and carry on.
"""

from __future__ import annotations

import io
import logging
import math
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import TrsllavaError

log = logging.getLogger(__name__)

# Bump when the pixels load_rgb returns for some file change: captions cached under the old
# version are then recomputed (the version is part of the captioning cache key).
LOADER_VERSION = 1
STRETCHES = ("bit_depth", "percentile")
OVERSIZE = ("downscale", "refuse")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
_ALPHA_MODES = {"RGBA": "RGBA", "RGBa": "RGBA", "LA": "LA", "La": "LA", "PA": "RGBA"}
_HIGH_BIT_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32S"}
# EXIF/TIFF orientation -> Pillow transposition (the table of ImageOps.exif_transpose)
_ORIENTATION = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT], 3: [Image.Transpose.ROTATE_180], 4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE], 6: [Image.Transpose.ROTATE_270], 7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}
_bomb_check = threading.Lock()


@dataclass(frozen=True)
class ImageOptions:
    """How files become pixels (config ``images:``; see the module docstring for each step).

    ``max_pixels``: width x height above which ``oversize`` applies (``downscale`` to fit, or
    ``refuse``). ``stretch``: ``bit_depth`` or ``percentile`` (with ``percentiles``, low and high,
    in percent). ``min_side`` (pixels) and ``max_aspect`` (longer / shorter side): smaller or
    thinner images are padded with black."""

    max_pixels: int = 100_000_000
    oversize: str = "downscale"
    stretch: str = "bit_depth"
    percentiles: tuple[float, float] = (2.0, 98.0)
    min_side: int = 32
    max_aspect: float = 20.0

    def __post_init__(self):
        where = "config: images."
        if self.oversize not in OVERSIZE:
            raise TrsllavaError(f"{where}oversize is '{self.oversize}', not one of {list(OVERSIZE)}")
        if self.stretch not in STRETCHES:
            raise TrsllavaError(f"{where}stretch is '{self.stretch}', not one of {list(STRETCHES)}")
        low, high = (float(p) for p in self.percentiles)
        if not 0 <= low < high <= 100:
            raise TrsllavaError(f"{where}percentiles must be two numbers 0 <= low < high <= 100, got {list(self.percentiles)}")
        object.__setattr__(self, "percentiles", (low, high))
        if int(self.max_pixels) < 1 or int(self.min_side) < 1 or float(self.max_aspect) < 1:
            raise TrsllavaError(f"{where}max_pixels and min_side must be >= 1 and max_aspect >= 1, got "
                                f"{self.max_pixels}, {self.min_side}, {self.max_aspect}")

    @classmethod
    def from_config(cls, config: dict | None) -> "ImageOptions":
        """The ``images:`` block of a config (defaults for what it leaves out; unknown keys are errors)."""
        block = dict((config or {}).get("images") or {})
        unknown = sorted(set(block) - set(cls.__dataclass_fields__))
        if unknown:
            raise TrsllavaError(f"config: images has unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        if "percentiles" in block:
            block["percentiles"] = tuple(block["percentiles"])
        return cls(**block)

    def fingerprint(self, max_side: int | None = None) -> dict:
        """What decides the pixels besides the file's bytes: part of the captioning cache key."""
        return {"loader": LOADER_VERSION, **asdict(self), "percentiles": list(self.percentiles), "max_side": max_side}


DEFAULT_OPTIONS = ImageOptions()


@dataclass(frozen=True)
class ImageLoader:
    """``load_rgb`` bound to one consumer's settings: the options and its longer-side cap."""

    options: ImageOptions = DEFAULT_OPTIONS
    max_side: int | None = None

    def load(self, path: str | Path) -> Image.Image:
        return load_rgb(path, options=self.options, max_side=self.max_side)

    def fingerprint(self) -> dict:
        return self.options.fingerprint(self.max_side)


def load_rgb(path: str | Path, *, options: ImageOptions = DEFAULT_OPTIONS, max_side: int | None = None) -> Image.Image:
    """The 8-bit RGB pixels of the image file ``path`` (a loaded ``PIL.Image`` in mode RGB, the
    file closed), made as the module docstring says. ``max_side``: cap of the longer side in pixels
    (None: none). Raises ``TrsllavaError`` naming the file when it cannot become pixels."""
    path = Path(path)
    if not path.is_file():
        raise TrsllavaError(f"image {path}: file not found")
    try:
        with path.open("rb") as handle:
            head = handle.read(32)
    except OSError as exc:
        raise TrsllavaError(f"image {path}: cannot be read: {exc}") from exc
    try:
        if _is_16bit_colour_png(head):
            image = _from_array(*_read_png16(path, options), path, options)
        elif head.startswith(TIFF_SIGNATURES) and _tiff_needs_tifffile(path):
            image = _from_array(*_read_tiff(path, options), path, options)
        else:
            image = _read_with_pillow(path, options)
    except TrsllavaError:
        raise
    except MemoryError as exc:
        raise TrsllavaError(f"image {path}: out of memory while decoding it; lower images.max_pixels") from exc
    except Exception as exc:  # noqa: BLE001 - decoders raise many types (OSError, ValueError, SyntaxError, struct.error)
        raise TrsllavaError(f"image {path}: not readable ({type(exc).__name__}: {_one_line(exc)})") from exc
    image = _fit_pixels(image, path, options)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
    return _pad(image, path, options)


def encode_png(image: Image.Image) -> bytes:
    """Lossless PNG bytes of loaded pixels (the OpenAI payload: the server decodes exactly these)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -------------------------------------------------------------------------------------------- readers

def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _is_16bit_colour_png(head: bytes) -> bool:
    """IHDR of a PNG: bit depth 16 with colour (2), grey + alpha (4) or colour + alpha (6)."""
    return head.startswith(PNG_SIGNATURE) and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 4, 6)


def _read_png16(path: Path, options: ImageOptions) -> tuple[np.ndarray, bool, int]:
    """(H x W x C uint16 array, has alpha, orientation) of a 16-bit colour PNG, through pypng."""
    try:
        import png
    except ImportError as exc:
        raise TrsllavaError(f"image {path}: a 16-bit colour PNG needs the pypng package (pip install pypng)") from exc
    width, height, rows, info = png.Reader(filename=str(path)).asDirect()  # rows are decoded lazily
    _check_pixels(width, height, path, options)
    planes = info["planes"]
    array = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows]).reshape(height, width, planes)
    return array, bool(info.get("alpha")), 1


def _tiff_needs_tifffile(path: Path) -> bool:
    """Pillow reads single-band and 8-bit TIFFs right; it truncates multi-band ones of more than 8
    bits to their high byte and misreads some (4-band uint16 as a narrow I;16 image)."""
    try:
        with _no_bomb_check():
            with Image.open(path) as image:
                bits = image.tag_v2.get(258, (1,))
                samples = int(image.tag_v2.get(277, 1))
    except Exception:  # noqa: BLE001 - Pillow cannot open it: tifffile may (planar, BigTIFF, 12-bit)
        return True
    bits = bits if isinstance(bits, tuple) else (bits,)
    return samples > 1 and max(int(b) for b in bits) > 8


def _read_tiff(path: Path, options: ImageOptions) -> tuple[np.ndarray, bool, int]:
    """(H x W x C array, has alpha, orientation) of the first page of a TIFF, through tifffile."""
    try:
        import tifffile
    except ImportError as exc:
        raise TrsllavaError(f"image {path}: a TIFF of more than 8 bits per band needs the tifffile package "
                            "(pip install tifffile)") from exc
    with tifffile.TiffFile(path) as tif:
        if len(tif.pages) > 1:
            log.info("image %s: %d pages; using the first", path, len(tif.pages))
        page = tif.pages[0]
        shape = page.shape
        planar = page.planarconfig == 2 and page.samplesperpixel > 1
        height, width = (shape[1], shape[2]) if planar else (shape[0], shape[1])
        _check_pixels(width, height, path, options)
        array = page.asarray()
        extra = page.tags.get(338)  # ExtraSamples: 1 associated, 2 unassociated alpha
        alpha = extra is not None and any(int(v) in (1, 2) for v in np.atleast_1d(extra.value))
        orientation = int(page.tags[274].value) if 274 in page.tags else 1
    if planar:
        array = np.moveaxis(array, 0, -1)
    return array, alpha, orientation


class _no_bomb_check:
    """Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS at open with a traceback; our own cap
    (images.max_pixels) replaces that check, so it is off while we open a file."""

    def __enter__(self):
        _bomb_check.acquire()
        self._saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None

    def __exit__(self, *exc):
        Image.MAX_IMAGE_PIXELS = self._saved
        _bomb_check.release()


def _read_with_pillow(path: Path, options: ImageOptions) -> Image.Image:
    try:
        with _no_bomb_check():
            opened = Image.open(path)
    except UnidentifiedImageError as exc:
        raise TrsllavaError(f"image {path}: not an image file Pillow can read (empty, a text file, or another "
                            "format under an image name?)") from exc
    with opened:
        frames = getattr(opened, "n_frames", 1)
        if frames > 1:
            log.info("image %s: %d pages; using the first", path, frames)
            opened.seek(0)
        _check_pixels(opened.width, opened.height, path, options)
        if opened.width * opened.height > options.max_pixels and opened.format == "JPEG":
            scale = math.sqrt(options.max_pixels / (opened.width * opened.height))
            opened.draft("RGB", (max(1, int(opened.width * scale)), max(1, int(opened.height * scale))))
        try:
            opened.load()
        except OSError as exc:
            raise TrsllavaError(f"image {path}: truncated or corrupt ({_one_line(exc)})") from exc
        image = _oriented(opened, path)
        return _to_rgb(image, path, options)


def _oriented(image: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # noqa: BLE001 - a broken EXIF block: keep the pixels as stored
        log.warning("image %s: EXIF orientation unreadable (%s); used as stored", path, _one_line(exc))
        return image.copy()


def _to_rgb(image: Image.Image, path: Path, options: ImageOptions) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _HIGH_BIT_MODES:
        return _from_array(np.asarray(image), False, 1, path, options, oriented=True)
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode in _ALPHA_MODES:
        image = image.convert(_ALPHA_MODES[mode])
        mode = image.mode
    if mode in ("RGBA", "LA"):
        return _composite_on_black(np.asarray(image.convert("RGBA")))
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise TrsllavaError(f"image {path}: mode {image.mode} cannot be converted to RGB ({_one_line(exc)})") from exc


def _composite_on_black(rgba: np.ndarray) -> Image.Image:
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    return Image.fromarray(np.rint(rgba[..., :3].astype(np.float32) * alpha).astype(np.uint8), "RGB")


# ----------------------------------------------------------------------------------------- arrays

def _from_array(array: np.ndarray, alpha: bool, orientation: int, path: Path, options: ImageOptions,
                oriented: bool = False) -> Image.Image:
    """An H x W or H x W x C array of any numeric type -> 8-bit RGB (stretch, alpha, band choice)."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or 0 in array.shape:
        raise TrsllavaError(f"image {path}: unsupported array shape {array.shape}")
    bands = array.shape[2]
    if alpha and bands in (2, 4):
        colour, opacity = array[..., :-1], array[..., -1].astype(np.float64)
        top = float(np.iinfo(array.dtype).max) if np.issubdtype(array.dtype, np.integer) else max(1.0, float(opacity.max()))
        opacity = np.clip(opacity / top, 0.0, 1.0)[..., None]
    else:
        colour, opacity = array, None
        if bands > 3:
            log.info("image %s: %d bands without alpha; the first three are used as R, G, B", path, bands)
            colour = array[..., :3]
        elif bands == 2:
            colour = array[..., :1]
    pixels = _to_8bit(colour, options)
    if opacity is not None:
        pixels = np.rint(pixels.astype(np.float64) * opacity).astype(np.uint8)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    image = Image.fromarray(np.ascontiguousarray(pixels), "RGB")
    if not oriented:
        for step in _ORIENTATION.get(orientation, []):
            image = image.transpose(step)
    return image


def _to_8bit(array: np.ndarray, options: ImageOptions) -> np.ndarray:
    """Bands of any numeric type -> uint8 by ``options.stretch`` (see the module docstring)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        values = np.where(finite, values, 0.0)
    is_float = np.issubdtype(array.dtype, np.floating)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if options.stretch == "bit_depth":
        if is_float and low >= 0.0 and high <= 1.0:
            return np.rint(values * 255.0).astype(np.uint8)
        if not is_float and low >= 0:
            bits = max(8, int(high).bit_length())
            return np.rint(values * (255.0 / (2**bits - 1))).astype(np.uint8)
    return _percentile_stretch(values, options.percentiles)


def _percentile_stretch(values: np.ndarray, percentiles: tuple[float, float]) -> np.ndarray:
    out = np.empty(values.shape, dtype=np.uint8)
    for band in range(values.shape[2]):
        data = values[..., band]
        low, high = np.percentile(data, percentiles)
        if high <= low:  # a flat band (between the cuts): outliers above white, the rest grey (black if 0)
            out[..., band] = np.where(data > high, 255, np.where(data < low, 0, 128 if high != 0 else 0))
            continue
        out[..., band] = np.rint(np.clip((data - low) / (high - low), 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


# ------------------------------------------------------------------------------------ size handling

def _check_pixels(width: int, height: int, path: Path, options: ImageOptions) -> None:
    if width * height > options.max_pixels and options.oversize == "refuse":
        raise TrsllavaError(
            f"image {path}: {width} x {height} pixels ({width * height:,}) exceed images.max_pixels "
            f"({options.max_pixels:,}); raise images.max_pixels or set images.oversize: downscale"
        )


def _fit_pixels(image: Image.Image, path: Path, options: ImageOptions) -> Image.Image:
    pixels = image.width * image.height
    if pixels <= options.max_pixels:
        return image
    scale = math.sqrt(options.max_pixels / pixels)
    size = (max(1, int(image.width * scale)), max(1, int(image.height * scale)))
    log.info("image %s: %d x %d pixels exceed images.max_pixels (%d); downscaled to %d x %d",
             path, image.width, image.height, options.max_pixels, *size)
    return image.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def padded_size(width: int, height: int, options: ImageOptions) -> tuple[int, int]:
    """The smallest (width, height) >= the image's with both sides >= ``min_side`` and
    longer / shorter <= ``max_aspect`` (the image's own size when it already satisfies both)."""
    new_width = max(width, options.min_side, math.ceil(height / options.max_aspect))
    new_height = max(height, options.min_side, math.ceil(width / options.max_aspect))
    return new_width, new_height


def _pad(image: Image.Image, path: Path, options: ImageOptions) -> Image.Image:
    size = padded_size(image.width, image.height, options)
    if size == image.size:
        return image
    canvas = Image.new("RGB", size, (0, 0, 0))
    canvas.paste(image, ((size[0] - image.width) // 2, (size[1] - image.height) // 2))
    log.info("image %s: %d x %d padded with black to %d x %d (images.min_side %d, images.max_aspect %g)",
             path, image.width, image.height, *size, options.min_side, options.max_aspect)
    return canvas
