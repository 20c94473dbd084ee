"""Dataset files: the paired-folder reader (one rule set for training and eval.py) and its checks.

Pixels are read by the project's one image reader, `nafnet_jax.data.image_io` (its module doc
has the rules: EXIF orientation applied, 8 and 16 bits kept, grayscale replicated to RGB, alpha
split off). On top of it, a *pair* of a restoration dataset follows these rules:

  * Pairing (`pair_folders`, used by training's paired-folder source, the tfds paired_folder
    builder and eval.py --lq_dir/--gt_dir): files match by stem, i.e. their path relative to
    the folder without the extension, so `lq/a.jpg` pairs with `gt/a.png` and `lq/sub/b.png`
    with `gt/sub/b.png`. The pair is known by that key ('a', 'sub/b'). A file without a
    partner, two files of one folder sharing a stem (`a.png` and `a.jpg`), an empty or missing
    folder are errors naming the files. Files with other extensions are ignored (reported).
  * Pixels (`read_pair_pixels`): (H, W, 3) RGB, uint8 or uint16 as the folder needs (an 8-bit
    file in a uint16 folder is scaled by 257, which gives exactly the same float image);
    grayscale replicated; an opaque alpha dropped; transparent pixels are an error (the colour
    under them is undefined for a restoration pair: flatten the file first). Both files of a
    pair must have the same (oriented) size.
  * The float image is `image_io.to_unit(pixels)`, in eval.py, in training (the tf.data
    pipeline divides by the same maximum) and in nafnet-restore (`image_io.read_image`).
  * Storing for tfds (`read_rgb8`, `png_bytes_rgb8`: the prepared builders' PNGs are 8-bit):
    a 16-bit file is rounded to 8 bits there (round(v * 255 / 65535)), reported; the direct
    folder source (the default for paired_folder) keeps 16 bits.

Every conversion is counted in a `DataReport` and logged with the files it touched; every error
is a `BadDataError` naming the file.
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

from nafnet_jax.data import image_io
from nafnet_jax.data.image_io import ImageHeader

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.webp', '.ppm')
_MAX_LISTED = 5  # how many offending files an error or log line names before "and N more"

# Pillow modes, by what happens on the way to RGB.
_GRAY_MODES = ('1', 'L', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'I')
_ALPHA_MODES = ('RGBA', 'LA', 'PA', 'La', 'RGBa')
SIXTEEN_TO_EIGHT = '16-bit -> 8-bit (rounded, for 8-bit PNG storage)'


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


def inspect_image(path: str | os.PathLike) -> ImageHeader:
    """Reads only the header of `path` (`image_io.inspect_image`); BadDataError if unreadable."""
    try:
        return image_io.inspect_image(path)
    except image_io.ImageReadError as e:
        raise BadDataError(str(e)) from e


def conversions_for(header: ImageHeader, to_8bit: bool = False) -> list[str]:
    """The conversions (see module doc) reading `header`'s file as a pair image will apply.

    to_8bit: the pixels are stored as 8 bits (tfds builders), so 16-bit files are rounded.
    """
    mode, kinds = header.mode, []
    if header.orientation != 1:
        kinds.append('EXIF orientation applied')
    if to_8bit and header.bits == 16:
        kinds.append(SIXTEEN_TO_EIGHT)
    if mode in _GRAY_MODES:
        kinds.append('grayscale -> RGB')
    elif mode in ('P', 'PA'):
        kinds.append('palette -> RGB')
    elif mode not in ('RGB',) + _ALPHA_MODES:
        kinds.append(f'{mode} -> RGB')
    if mode in _ALPHA_MODES:
        kinds.append('opaque alpha dropped')
    return kinds


def pair_pixels(pixels: np.ndarray, path: str, dtype=None) -> np.ndarray:
    """Integer pixels as read (`image_io.read_pixels`) -> (H, W, 3) RGB under the pair rules.

    dtype: np.uint8 or np.uint16 for the result (None: the file's own); an 8-bit file in uint16
    is scaled by 257 (the same float image), a 16-bit file in uint8 is rounded (tfds storage).
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if pixels.ndim != 3 or channels not in (1, 2, 3, 4):
        raise BadDataError(f'{path}: unsupported image shape {pixels.shape} (expected 1 to 4 channels)')
    if channels in (2, 4):
        alpha = pixels[..., -1]
        if not np.all(alpha == np.iinfo(pixels.dtype).max):
            raise BadDataError(f'{path}: has transparent pixels; restoration pairs need opaque '
                               'images: flatten it onto a background first')
        pixels = pixels[..., :-1]
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    dtype = pixels.dtype if dtype is None else np.dtype(dtype)
    if dtype != pixels.dtype:
        if dtype == np.uint16:  # from uint8
            pixels = pixels.astype(np.uint16) * np.uint16(257)
        else:  # uint16 -> uint8: rounded as image_io.quantize
            pixels = image_io.quantize(image_io.to_unit(pixels), 8)
    return np.ascontiguousarray(pixels)


def decode_pair_pixels(data: bytes, path: str, dtype=None, report: DataReport | None = None) -> np.ndarray:
    """Encoded bytes of a pair's file -> (H, W, 3) RGB (`pair_pixels`); BadDataError naming `path`."""
    try:
        pixels = image_io.decode_pixels(data, path)
        if report is not None:
            _report_decoded(data, path, pixels, dtype, report)
        return pair_pixels(pixels, path, dtype)
    except image_io.ImageReadError as e:
        reason = str(e)[len(f'{path}: '):] if str(e).startswith(f'{path}: ') else str(e)
        raise BadDataError(f'{path}: cannot decode image ({reason})') from e


def _report_decoded(data: bytes, path: str, pixels: np.ndarray, dtype, report: DataReport) -> None:
    """Records the conversions of one decoded file (by its header, as `check_pair_headers`)."""
    try:
        header = image_io.inspect_image(path)
    except image_io.ImageReadError:
        return  # the bytes decoded: a header we cannot re-read adds nothing to report
    for kind in conversions_for(header, to_8bit=np.dtype(dtype or pixels.dtype) == np.uint8):
        report.convert(kind, path)


def read_pair_pixels(path: str | os.PathLike, dtype=None, report: DataReport | None = None) -> np.ndarray:
    """Reads one file of a pair as (H, W, 3) RGB integer pixels (module-doc rules)."""
    path = os.fspath(path)
    try:
        with open(path, 'rb') as f:
            data = f.read()
    except OSError as e:
        raise BadDataError(f'{path}: cannot read file ({e})') from e
    if not data:
        raise BadDataError(f'{path}: empty file (0 bytes)')
    return decode_pair_pixels(data, path, dtype, report)


def decode_rgb8(data: bytes, path: str, report: DataReport | None = None) -> np.ndarray:
    """Decodes encoded image bytes (read from `path`, named in errors) to uint8 (H, W, 3) RGB."""
    return decode_pair_pixels(data, path, np.uint8, report)


def read_rgb8(path: str | os.PathLike, report: DataReport | None = None) -> np.ndarray:
    """Reads an image file as uint8 (H, W, 3) RGB (pair rules; 16-bit files rounded to 8 bits)."""
    return read_pair_pixels(path, np.uint8, report)


def is_plain_png(data: bytes) -> bool:
    """True for a PNG stored as 8-bit RGB (colour type 2), whose bytes can be kept as they are."""
    return data.startswith(image_io.PNG_SIGNATURE) and len(data) > 25 and data[24] == 8 and data[25] == 2


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


def check_pair_headers(pairs: Iterable[Pair], report: DataReport | None = None,
                       to_8bit: bool = False) -> int:
    """Header-only checks of every pair: readable, equal (oriented) sizes (no pixel decode).

    Records in `report` the conversions the reads will make (`to_8bit`: stored as 8 bits).
    Returns the largest bit depth seen (8 or 16). Raises BadDataError naming the file.
    """
    bits = 8
    for pair in pairs:
        gt = inspect_image(pair.gt)
        lq = gt if pair.lq == pair.gt else inspect_image(pair.lq)
        for header in dict.fromkeys((lq, gt)):
            bits = max(bits, header.bits)
            for kind in conversions_for(header, to_8bit):
                if report is not None:
                    report.convert(kind, header.path)
        if (lq.width, lq.height) != (gt.width, gt.height):
            raise BadDataError(f'pair {pair.name!r}: sizes differ: {pair.lq} is '
                               f'{lq.width}x{lq.height}, {pair.gt} is {gt.width}x{gt.height}')
    return bits


def check_same_size(name: str, lq_shape, gt_shape, lq_path: str, gt_path: str) -> None:
    """Raises BadDataError when a decoded lq and gt differ in (height, width)."""
    if tuple(lq_shape[:2]) != tuple(gt_shape[:2]):
        raise BadDataError(f'pair {name!r}: sizes differ: {lq_path} is '
                           f'{lq_shape[1]}x{lq_shape[0]}, {gt_path} is '
                           f'{gt_shape[1]}x{gt_shape[0]} (width x height)')
