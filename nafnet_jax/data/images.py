"""Reading, validating and pairing image files.

Every image file the data package reads goes through `read_rgb8`, which returns uint8 (H, W, 3) RGB
or raises `BadDataError` naming the file. Files that are not 8-bit RGB are converted as follows
(each conversion is counted in a `DataReport` and logged with the files it touched):

  ==========================  ===========================================================
  file                        conversion
  ==========================  ===========================================================
  grayscale (L, 1-bit)        channel repeated to RGB
  16 bits per channel         high byte kept (v >> 8), as Pillow and OpenCV's 8-bit reads do
  palette (P)                 expanded through the palette (lossless)
  RGBA / LA, fully opaque     alpha dropped
  RGBA / LA / P, transparent  error: restoration pairs need opaque pixels; flatten the file first
  CMYK, YCbCr, float, ...     error: unsupported mode
  truncated / not an image    error
  ==========================  ===========================================================

EXIF orientation is ignored (pixels are used as stored), so an lq/gt pair stays aligned.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import logging
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')
_MAX_LISTED = 5  # how many offending files an error or log line names before "and N more"

# Pillow modes we accept, by what has to happen to reach 8-bit RGB.
_GRAY_MODES = ('1', 'L', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'La', 'RGBa')


class BadDataError(ValueError):
    """A dataset file or folder cannot be used; the message names it and says why."""


def _listing(items: Sequence[str]) -> str:
    """'a, b, c' naming at most `_MAX_LISTED` items, then '(and N more)'."""
    shown = ', '.join(str(i) for i in items[:_MAX_LISTED])
    extra = len(items) - _MAX_LISTED
    return shown + (f' (and {extra} more)' if extra > 0 else '')


@dataclasses.dataclass
class DataReport:
    """Counts what the reader did besides plain reads: conversions and ignored files."""
    conversions: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    ignored: list = dataclasses.field(default_factory=list)

    def convert(self, kind: str, path: str) -> None:
        self.conversions[kind].append(str(path))

    def ignore(self, path: str, why: str) -> None:
        self.ignored.append(f'{path} ({why})')

    def summary(self) -> str:
        """One line per conversion kind and for ignored files; '' when nothing happened."""
        lines = [f'{len(paths)} file(s) converted: {kind}: {_listing(paths)}'
                 for kind, paths in sorted(self.conversions.items())]
        if self.ignored:
            lines.append(f'{len(self.ignored)} file(s) ignored: {_listing(self.ignored)}')
        return '\n'.join(lines)

    def log(self, what: str) -> None:
        text = self.summary()
        if text:
            log.warning('%s:\n%s', what, text)


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding the pixels."""
    path: str
    width: int
    height: int
    mode: str  # Pillow mode, e.g. 'RGB', 'L', 'RGBA', 'I;16'
    bits: int  # bits per channel (8 or 16)
    format: str  # 'PNG', 'JPEG', ...


def _png_bit_depth(head: bytes) -> int | None:
    """Bit depth from a PNG's IHDR chunk (byte 24), or None for other formats."""
    if head[:8] == b'\x89PNG\r\n\x1a\n' and len(head) >= 25:
        return head[24]
    return None


def inspect_image(path: str | os.PathLike) -> ImageHeader:
    """Reads only the header of `path`; raises BadDataError if it is not a readable image."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            head = f.read(32)
            f.seek(0)
            with Image.open(f) as im:
                mode, (width, height), fmt = im.mode, im.size, im.format
    except FileNotFoundError:
        raise BadDataError(f'{path}: file not found') from None
    except Exception as e:  # Pillow raises many types for bad files
        raise BadDataError(f'{path}: not a readable image ({type(e).__name__}: {e})') from e
    bits = _png_bit_depth(head) or (16 if mode.startswith('I;16') else 8)
    return ImageHeader(path, width, height, mode, bits, fmt or '')


def conversions_for(header: ImageHeader) -> list[str]:
    """The conversions (see module doc) `read_rgb8` will apply; raises for unsupported modes."""
    mode, kinds = header.mode, []
    if header.bits == 16 or mode.startswith('I;16'):
        kinds.append('16-bit -> 8-bit (v >> 8)')
    if mode in _GRAY_MODES:
        kinds.append('grayscale -> RGB')
    elif mode in ('P', 'PA'):
        kinds.append('palette -> RGB')
    elif mode not in ('RGB',) + _ALPHA_MODES:
        raise BadDataError(f'{header.path}: unsupported image mode {mode!r}; '
                           'convert it to 8-bit RGB (PNG) first')
    if mode in _ALPHA_MODES:
        kinds.append('opaque alpha dropped')
    return kinds


def _to_rgb8(im: Image.Image, path: str) -> np.ndarray:
    """Converts a loaded Pillow image to uint8 (H, W, 3) following the module-doc table."""
    mode = im.mode
    if mode in ('P', 'PA'):
        im = im.convert('RGBA')  # palette entries may carry transparency
        mode = 'RGBA'
    if mode in _ALPHA_MODES:
        arr = np.asarray(im)
        if not np.all(arr[..., -1] == 255):
            raise BadDataError(f'{path}: has transparent pixels (mode {im.mode}); restoration '
                               'pairs need opaque images: flatten it onto a background first')
        rgb = arr[..., :-1]
        return np.ascontiguousarray(np.repeat(rgb, 3, axis=-1) if rgb.shape[-1] == 1 else rgb)
    if mode in _GRAY_MODES:
        arr = np.asarray(im)
        if mode.startswith('I'):  # 16-bit (or 32-bit int) gray: keep the high byte of 16 bits
            if arr.min() < 0 or arr.max() > 65535:
                raise BadDataError(f'{path}: integer image with values outside 0..65535')
            arr = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        arr = arr.astype(np.uint8)  # mode '1' gives bool
        if mode == '1':
            arr = arr * np.uint8(255)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=-1))
    if mode == 'RGB':
        return np.asarray(im, dtype=np.uint8)
    raise BadDataError(f'{path}: unsupported image mode {mode!r}; convert it to 8-bit RGB first')


def decode_rgb8(data: bytes, path: str, report: DataReport | None = None) -> np.ndarray:
    """Decodes encoded image bytes (read from `path`, named in errors) to uint8 (H, W, 3) RGB."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            header = ImageHeader(path, im.size[0], im.size[1], im.mode,
                                 _png_bit_depth(data[:32]) or 8, im.format or '')
            kinds = conversions_for(header)
            arr = _to_rgb8(im, path)
    except BadDataError:
        raise
    except Exception as e:  # truncated, corrupt or not an image at all
        raise BadDataError(f'{path}: cannot decode image ({type(e).__name__}: {e})') from e
    if report is not None:
        for kind in kinds:
            report.convert(kind, path)
    return arr


def read_rgb8(path: str | os.PathLike, report: DataReport | None = None) -> np.ndarray:
    """Reads an image file as uint8 (H, W, 3) RGB, converting per the module-doc table."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise BadDataError(f'{path}: cannot read file ({e})') from e
    return decode_rgb8(data, path, report)


def is_plain_png(data: bytes) -> bool:
    """True for a PNG stored as 8-bit RGB (colour type 2), whose bytes can be kept as they are."""
    return _png_bit_depth(data[:32]) == 8 and data[25] == 2


def encode_png(image: np.ndarray, compress_level: int = 3) -> bytes:
    """Lossless PNG of uint8 (H, W, 3) `image` (level 3, as the original's data preparation)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG', compress_level=compress_level)
    return buf.getvalue()


def png_bytes_rgb8(path: str | os.PathLike, report: DataReport | None = None
                   ) -> tuple[bytes, tuple[int, int]]:
    """Validated lossless PNG bytes of an image file, and its (height, width).

    8-bit RGB PNGs keep their original bytes (after a full decode to check them); anything else is
    converted (module-doc table) and encoded as PNG. Decoded JPEG pixels are stored as PNG, so a
    lossy file is never re-encoded lossily.
    """
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise BadDataError(f'{path}: cannot read file ({e})') from e
    image = decode_rgb8(data, path, report)
    encoded = data if is_plain_png(data) else encode_png(image)
    return encoded, image.shape[:2]


def list_images(folder: str | os.PathLike, report: DataReport | None = None,
                recursive: bool = True) -> dict[str, str]:
    """Maps the key (relative path without extension, '/'-separated) of each image file to its path.

    Non-image files are ignored and recorded in `report`. Raises BadDataError if `folder` is not a
    directory, holds no image, or two files share a key (e.g. `a.png` and `a.jpg`).
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise BadDataError(f'{folder}: not a directory')
    found: dict[str, str] = {}
    walker = os.walk(folder) if recursive else [(folder, [], os.listdir(folder))]
    for root, dirs, files in walker:
        dirs.sort()
        for fname in sorted(files):
            path = os.path.join(root, fname)
            stem, ext = os.path.splitext(os.path.relpath(path, folder))
            if ext.lower() not in IMAGE_EXTENSIONS or fname.startswith('.'):
                if report is not None and os.path.isfile(path):
                    report.ignore(path, 'not an image file')
                continue
            key = stem.replace(os.sep, '/')
            if key in found:
                raise BadDataError(f'{folder}: two images share the name {key!r}: '
                                   f'{found[key]} and {path}')
            found[key] = path
    if not found:
        raise BadDataError(f'{folder}: no image files ({"/".join(IMAGE_EXTENSIONS)}) in this '
                           'folder')
    return found


@dataclasses.dataclass(frozen=True)
class Pair:
    """One lq/gt file pair and the name it is known by."""
    name: str
    lq: str
    gt: str


def match_pairs(lq: dict[str, str], gt: dict[str, str], where: str) -> list[Pair]:
    """Pairs two key->path maps; raises BadDataError naming every file without a counterpart."""
    only_lq = sorted(set(lq) - set(gt))
    only_gt = sorted(set(gt) - set(lq))
    if only_lq or only_gt:
        parts = []
        if only_lq:
            parts.append(f'{len(only_lq)} lq file(s) without gt: '
                         f'{_listing([lq[k] for k in only_lq])}')
        if only_gt:
            parts.append(f'{len(only_gt)} gt file(s) without lq: '
                         f'{_listing([gt[k] for k in only_gt])}')
        raise BadDataError(f'{where}: missing counterparts: ' + '; '.join(parts))
    return [Pair(key, lq[key], gt[key]) for key in sorted(lq)]


def pair_folders(lq_dir: str | os.PathLike, gt_dir: str | os.PathLike,
                 report: DataReport | None = None) -> list[Pair]:
    """Pairs the images of two folders by relative file name (extension may differ)."""
    return match_pairs(list_images(lq_dir, report), list_images(gt_dir, report),
                       f'{os.fspath(lq_dir)} vs {os.fspath(gt_dir)}')


def check_pair_headers(pairs: Iterable[Pair], report: DataReport | None = None) -> None:
    """Header-only checks of every pair: readable, supported mode, equal sizes (no pixel decode).

    Records in `report` the conversions the reads will make. Raises BadDataError naming the file.
    """
    for pair in pairs:
        gt = inspect_image(pair.gt)
        lq = gt if pair.lq == pair.gt else inspect_image(pair.lq)
        for header in dict.fromkeys((lq, gt)):
            for kind in conversions_for(header):
                if report is not None:
                    report.convert(kind, header.path)
        if (lq.width, lq.height) != (gt.width, gt.height):
            raise BadDataError(f'pair {pair.name!r}: sizes differ: {pair.lq} is '
                               f'{lq.width}x{lq.height}, {pair.gt} is {gt.width}x{gt.height}')


def check_same_size(name: str, lq_shape, gt_shape, lq_path: str, gt_path: str) -> None:
    """Raises BadDataError when a decoded lq and gt differ in (height, width)."""
    if tuple(lq_shape[:2]) != tuple(gt_shape[:2]):
        raise BadDataError(f'pair {name!r}: sizes differ: {lq_path} is '
                           f'{lq_shape[1]}x{lq_shape[0]}, {gt_path} is '
                           f'{gt_shape[1]}x{gt_shape[0]} (width x height)')
