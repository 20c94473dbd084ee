"""Image files in and out for the restore CLI and eval: bit depth, grayscale and alpha kept.

Reading:
  * PNG through TensorFlow's libpng decoder (`tf.io.decode_png`), because
    Pillow silently reduces 16-bit RGB/RGBA PNGs to 8 bits; the bit depth is
    read from the PNG header;
  * TIFF through tifffile (16-bit RGB), everything else (JPEG, BMP, WebP, ...)
    through Pillow, with the EXIF orientation applied.
Writing: PNG only, 8 or 16 bits, 1 to 4 channels (`tf.io.encode_png`), to a
temporary file in the destination folder that is then renamed over the
destination, so a crash never leaves a half-written image. Written files get
the permissions the umask gives a new file (as `open()` would), not the
temporary file's private 0600.

TensorFlow is imported on first use with its GPUs hidden (it must not take the
accelerator memory JAX uses).
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import tempfile
from pathlib import Path
from typing import Optional, Union

import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SUFFIXES = (".tif", ".tiff")
PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """A file that is not an image this module can read (message names the file)."""


@dataclasses.dataclass
class Picture:
    """A decoded image, split into what the model sees and what is kept aside.

    Attributes:
      rgb: (H, W, 3) float32 in [0, 1]; a grayscale image is replicated to 3 channels.
      bit_depth: 8 or 16 (bits per channel in the file).
      grayscale: the file had one luminance channel (plus maybe alpha).
      alpha: (H, W) alpha channel in the file's integer dtype, or None.
    """

    rgb: np.ndarray
    bit_depth: int
    grayscale: bool
    alpha: Optional[np.ndarray] = None

    @property
    def max_value(self) -> int:
        return (1 << self.bit_depth) - 1


_TF = None


def _tf():
    """TensorFlow, imported once, with no GPU visible to it."""
    global _TF
    if _TF is None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf
        try:
            tf.config.set_visible_devices([], "GPU")
        except RuntimeError:  # already initialised elsewhere (e.g. by the data pipeline)
            pass
        _TF = tf
    return _TF


# ---------------------------------------------------------------------------
# Reading.
# ---------------------------------------------------------------------------

def picture_from_array(pixels: np.ndarray) -> Picture:
    """Splits an integer (H, W), (H, W, 1..4) uint8/uint16 array into a `Picture`."""
    if pixels.dtype == np.uint8:
        depth = 8
    elif pixels.dtype == np.uint16:
        depth = 16
    else:
        raise ImageReadError(f"unsupported pixel type {pixels.dtype} (expected 8 or 16 bits)")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if pixels.ndim != 3 or channels not in (1, 2, 3, 4):
        raise ImageReadError(f"unsupported image shape {pixels.shape}")
    grayscale = channels in (1, 2)
    colour = pixels[..., :1] if grayscale else pixels[..., :3]
    alpha = pixels[..., -1].copy() if channels in (2, 4) else None
    rgb = colour.astype(np.float32) / np.float32((1 << depth) - 1)
    if grayscale:
        rgb = np.repeat(rgb, 3, axis=-1)
    return Picture(rgb=rgb, bit_depth=depth, grayscale=grayscale, alpha=alpha)


def _decode_png(data: bytes) -> np.ndarray:
    if len(data) < 29:
        raise ImageReadError("truncated PNG header")
    depth = data[24]  # IHDR bit depth: 1, 2, 4, 8 or 16
    tf = _tf()
    dtype = tf.uint16 if depth == 16 else tf.uint8
    try:
        return tf.io.decode_png(data, channels=0, dtype=dtype).numpy()
    except tf.errors.OpError as e:
        # TF wraps libpng's message in '{{function_node ...}} ... [Op:DecodePng]'.
        reason = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", e.message or "").strip() or "cannot decode"
        raise ImageReadError(f"corrupt PNG ({reason})") from None


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
    except UnidentifiedImageError:
        raise ImageReadError("not an image in a format this tool reads") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"not a readable image ({e})") from e
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if mode == "I":  # 32-bit integer luminance (Pillow's form of some 16-bit files)
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError("32-bit integer images are not supported")
        return arr.astype(np.uint16)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        if mode == "F":
            raise ImageReadError("floating-point images are not supported")
        im = im.convert("RGBA" if "A" in mode else "RGB")
    return np.asarray(im)


def _decode_tiff(data: bytes) -> np.ndarray:
    try:
        import tifffile
    except ImportError:  # Pillow reads 8-bit and grayscale TIFFs
        return _decode_pillow(data)
    try:
        arr = tifffile.imread(io.BytesIO(data))
    except Exception as e:  # tifffile raises a variety of types for bad files
        raise ImageReadError(f"not a readable TIFF ({e})") from e
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar -> interleaved
    return arr


def read_image(path: PathLike) -> Picture:
    """Reads an image file into a `Picture` (raises ImageReadError naming the file)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        if data.startswith(PNG_SIGNATURE):
            pixels = _decode_png(data)
        elif path.suffix.lower() in TIFF_SUFFIXES:
            pixels = _decode_tiff(data)
        else:
            pixels = _decode_pillow(data)
        return picture_from_array(pixels)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e


# ---------------------------------------------------------------------------
# Writing.
# ---------------------------------------------------------------------------

def quantize(rgb: np.ndarray, bit_depth: int) -> np.ndarray:
    """[0, 1] floats -> uint8/uint16 (clip, scale to the maximum, round half to even)."""
    dtype = {8: np.uint8, 16: np.uint16}[bit_depth]
    scale = float((1 << bit_depth) - 1)
    return np.round(np.clip(np.asarray(rgb, np.float64), 0.0, 1.0) * scale).astype(dtype)


def picture_to_array(rgb: np.ndarray, bit_depth: int, grayscale: bool,
                     alpha: Optional[np.ndarray] = None) -> np.ndarray:
    """Builds the (H, W, C) integer array to store: gray (mean of RGB) or RGB, plus alpha."""
    colour = np.mean(rgb, axis=-1, keepdims=True) if grayscale else rgb
    pixels = quantize(colour, bit_depth)
    if alpha is not None:
        if alpha.shape != pixels.shape[:2]:
            raise ValueError(f"alpha {alpha.shape} does not match the image {pixels.shape[:2]}")
        pixels = np.concatenate([pixels, alpha.astype(pixels.dtype)[..., None]], axis=-1)
    return pixels


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, 1..4) uint8/uint16 array."""
    if pixels.dtype not in (np.uint8, np.uint16) or pixels.ndim != 3 or pixels.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"cannot store a {pixels.dtype} array of shape {pixels.shape} as PNG")
    return _tf().io.encode_png(np.ascontiguousarray(pixels)).numpy()


def write_atomic(path: PathLike, data: bytes, overwrite: bool = False) -> None:
    """Writes bytes to `path` through a temporary file and a rename.

    Without `overwrite`, an existing `path` is never replaced (FileExistsError),
    even if it appears while writing (the no-clobber step is a hard link).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 is for the temporary name only
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if path appeared meanwhile
            except FileExistsError:
                raise FileExistsError(f"{path} exists (pass --overwrite to replace it)") from None
            except OSError:  # a filesystem without hard links
                if path.exists():
                    raise FileExistsError(f"{path} exists (pass --overwrite to replace it)") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def current_umask() -> int:
    """The process's umask (read by setting and restoring it; there is no read-only call)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_png(path: PathLike, pixels: np.ndarray, overwrite: bool = False) -> None:
    """Encodes an (H, W, C) uint8/uint16 array as PNG and writes it atomically."""
    write_atomic(path, encode_png(pixels), overwrite=overwrite)
