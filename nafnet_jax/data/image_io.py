"""The one image reader (training folders, eval.py, nafnet-restore) and the PNG writer.

Every image file a user gives this project is read by `read_pixels` (integer pixels) or
`read_image` (the model's float view), under one rule set:

  * Formats: PNG through TensorFlow's libpng decoder (`tf.io.decode_png`: Pillow silently
    reduces 16-bit RGB/RGBA PNGs to 8 bits); TIFF through tifffile (16-bit RGB); everything
    else (JPEG, BMP, WebP, PPM, ...) through Pillow.
  * EXIF orientation: applied (the pixels come out as a viewer shows the file) for every format
    read through Pillow or tifffile (JPEG, WebP, TIFF, ...). A PNG's rare eXIf chunk is not
    read: PNG pixels are used as stored. Both files of a pair follow the same rule, so a pair
    whose files carry different orientations fails the size check (naming both) or misaligns
    exactly as a viewer would show it.
  * Bit depth: 8 and 16 bits per channel are kept (uint8 / uint16 pixels); the float image is
    `to_unit(pixels)`: value / 255 or value / 65535 in float32 (1-, 2- and 4-bit PNGs decode
    to 8 bits). 32-bit integer luminance within 0..65535 is read as 16 bits; float pixels are
    an error.
  * Grayscale (L, 1-bit, 16-bit gray): replicated to 3 channels for the model
    (`Picture.grayscale` remembers it; nafnet-restore writes grayscale back).
  * Alpha (RGBA, LA, palette with transparency): split off (`Picture.alpha`); the colour is
    used as stored (not composited onto a background). nafnet-restore copies the alpha to its
    output unchanged; the paired-folder reader (training and eval.py, `nafnet_jax.data.images`)
    drops an alpha that is fully opaque and refuses a file with transparent pixels, naming it.
  * Palette images expand through their palette; other modes (CMYK, YCbCr, LAB, ...) are
    converted to RGB by Pillow.
  * Errors: `ImageReadError` (a ValueError) naming the file: unreadable, empty, truncated,
    not an image, unsupported pixel type.

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
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
EXIF_ORIENTATION_TAG = 0x0112
PathLike = Union[str, os.PathLike]


class ImageReadError(ValueError):
    """A file that is not an image this module can read (message names the file)."""


@dataclasses.dataclass
class Picture:
    """A decoded image, split into what the model sees and what is kept aside.

    Attributes:
      rgb: (H, W, 3) float32 in [0, 1] (`to_unit` of the colour channels); a grayscale image is
        replicated to 3 channels.
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


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding the pixels.

    width/height are those of the pixels `read_pixels` returns (after the EXIF orientation).
    """
    path: str
    width: int
    height: int
    mode: str         # Pillow's mode of the stored pixels, e.g. 'RGB', 'L', 'RGBA', 'I;16', 'P'
    bits: int         # bits per channel as read: 8 or 16
    format: str       # 'PNG', 'JPEG', 'TIFF', ...
    orientation: int  # EXIF orientation applied on reading (1: none)


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

def to_unit(pixels: np.ndarray) -> np.ndarray:
    """uint8 / uint16 pixels -> float32 in [0, 1]: value / 255 or / 65535 (the one rule for both).

    An 8-bit value v stored as v * 257 in uint16 gives exactly the same float as v in uint8
    (both are the correctly rounded v / 255).
    """
    pixels = np.asarray(pixels)
    if pixels.dtype not in (np.uint8, np.uint16):
        raise ImageReadError(f"unsupported pixel type {pixels.dtype} (expected 8 or 16 bits)")
    return pixels.astype(np.float32) / np.float32(np.iinfo(pixels.dtype).max)


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
    rgb = to_unit(colour)
    if grayscale:
        rgb = np.repeat(rgb, 3, axis=-1)
    return Picture(rgb=rgb, bit_depth=depth, grayscale=grayscale, alpha=alpha)


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, ...) pixels as stored -> as shown, for an EXIF orientation 1..8 (others: unchanged).

    The same transforms as Pillow's `ImageOps.exif_transpose` (tested against it).
    """
    transforms = {
        2: lambda a: a[:, ::-1],                    # mirrored left-right
        3: lambda a: a[::-1, ::-1],                 # rotated 180
        4: lambda a: a[::-1],                       # mirrored top-bottom
        5: lambda a: np.swapaxes(a, 0, 1),          # transposed
        6: lambda a: np.rot90(a, k=-1),             # rotated 90 clockwise
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],  # transversed
        8: lambda a: np.rot90(a, k=1),              # rotated 90 counter-clockwise
    }
    transform = transforms.get(int(orientation))
    return pixels if transform is None else np.ascontiguousarray(transform(pixels))


def _valid_orientation(value) -> int:
    try:
        value = int(value)
    except (TypeError, ValueError):
        return 1
    return value if 1 <= value <= 8 else 1


def _kind(data: bytes, suffix: str) -> str:
    if data.startswith(PNG_SIGNATURE):
        return "png"
    if suffix.lower() in TIFF_SUFFIXES or data[:4] in TIFF_SIGNATURES:
        return "tiff"
    return "pillow"


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


def _pillow_pixels(im) -> np.ndarray:
    """A loaded Pillow image -> integer (H, W[, C]) pixels as stored (no orientation)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.uint16)
    if mode == "I":  # 32-bit integer luminance (Pillow's form of some 16-bit files)
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            raise ImageReadError("32-bit integer images are not supported")
        return arr.astype(np.uint16)
    if mode == "F":
        raise ImageReadError("floating-point images are not supported")
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode == "PA":
        im = im.convert("RGBA")
    elif mode == "1":
        im = im.convert("L")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGBA" if "A" in mode else "RGB")
    return np.asarray(im)


def _decode_pillow(data: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            orientation = _valid_orientation(im.getexif().get(EXIF_ORIENTATION_TAG, 1))
            pixels = _pillow_pixels(im)
    except UnidentifiedImageError:
        raise ImageReadError("not an image in a format this tool reads") from None
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageReadError(f"not a readable image ({e})") from e
    return apply_orientation(pixels, orientation)


def _tiff_orientation(tif) -> int:
    tag = tif.pages[0].tags.get(274)  # TIFF/EXIF Orientation
    return _valid_orientation(tag.value if tag is not None else 1)


def _decode_tiff(data: bytes) -> np.ndarray:
    try:
        import tifffile
    except ImportError:  # Pillow reads 8-bit and grayscale TIFFs
        return _decode_pillow(data)
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            arr = tif.asarray()
            orientation = _tiff_orientation(tif)
    except Exception as e:  # tifffile raises a variety of types for bad files
        raise ImageReadError(f"not a readable TIFF ({e})") from e
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar -> interleaved
    return apply_orientation(arr, orientation)


def decode_pixels(data: bytes, path: PathLike = "<bytes>") -> np.ndarray:
    """Encoded image bytes -> integer pixels (H, W[, C]) uint8/uint16, oriented (module rules).

    `path` names the file in errors and gives its extension (TIFF detection).
    """
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        kind = _kind(data, Path(path).suffix)
        if kind == "png":
            pixels = _decode_png(data)
        elif kind == "tiff":
            pixels = _decode_tiff(data)
        else:
            pixels = _decode_pillow(data)
        if pixels.dtype not in (np.uint8, np.uint16):
            raise ImageReadError(f"unsupported pixel type {pixels.dtype} (expected 8 or 16 bits)")
        return pixels
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageReadError(f"{path}: cannot read ({e.strerror or e})") from e
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    return data


def read_pixels(path: PathLike) -> np.ndarray:
    """Reads an image file as integer pixels (H, W[, C]) uint8/uint16, oriented (module rules)."""
    path = Path(path)
    return decode_pixels(_read_bytes(path), path)


def read_image(path: PathLike) -> Picture:
    """Reads an image file into a `Picture` (raises ImageReadError naming the file)."""
    path = Path(path)
    pixels = read_pixels(path)  # its errors name the file
    try:
        return picture_from_array(pixels)
    except ImageReadError as e:
        raise ImageReadError(f"{path}: {e}") from e


def inspect_image(path: PathLike) -> ImageHeader:
    """Reads only the header of `path` (no pixel decode); raises ImageReadError naming the file."""
    path_str = os.fspath(path)
    try:
        with open(path_str, "rb") as f:
            head = f.read(64)
            f.seek(0)
            kind = _kind(head, Path(path_str).suffix)
            if kind == "tiff":
                header = _inspect_tiff(f, path_str)
                if header is not None:
                    return header
                f.seek(0)
            from PIL import Image
            with Image.open(f) as im:
                mode, (width, height), fmt = im.mode, im.size, im.format or ""
                orientation = 1 if kind == "png" else _valid_orientation(
                    im.getexif().get(EXIF_ORIENTATION_TAG, 1))
    except FileNotFoundError:
        raise ImageReadError(f"{path_str}: file not found") from None
    except Exception as e:  # Pillow raises many types for bad files
        raise ImageReadError(f"{path_str}: not a readable image ({type(e).__name__}: {e})") from e
    if kind == "png" and len(head) > 24:
        bits = 16 if head[24] == 16 else 8
    else:
        bits = 16 if mode.startswith("I;16") or mode == "I" else 8
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(path_str, width, height, mode, bits, fmt, orientation)


def _inspect_tiff(f, path: str) -> Optional[ImageHeader]:
    """A TIFF's header through tifffile (which reads 16-bit RGB), or None without tifffile."""
    try:
        import tifffile
    except ImportError:
        return None
    with tifffile.TiffFile(f) as tif:
        page = tif.pages[0]
        shape, orientation = page.shape, _tiff_orientation(tif)
        bits = 16 if page.dtype.itemsize == 2 else 8
        samples = page.samplesperpixel
    if len(shape) == 3 and shape[0] == samples and samples in (3, 4) and shape[-1] not in (1, 2, 3, 4):
        shape = shape[1:]  # planar
    height, width = shape[0], shape[1]
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}.get(samples, "RGB")
    if bits == 16:
        mode = "I;16" if samples == 1 else mode
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageHeader(path, int(width), int(height), mode, bits, "TIFF", orientation)


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
