"""Stereo super-resolution (NAFSSR) evaluation: whole-image inference, scoring, folders, files.

A stereo pair is one (H, W, 6) float32 array in [0, 1]: channels 0..2 the left
view, 3..5 the right view (the shared contract of the NAFSSR model and data).
A stereo SR model maps an (h, w, 6) low-resolution pair to an (s*h, s*w, 6)
one, s = `model.scale`.

Inference (`StereoRestorer`) runs the model on the *whole* pair, never padded
nor tiled: SCAM attends along each entire row of the other view, so padding a
row (or cutting it into tiles) changes every output pixel of that row, not
only the border ones. Each distinct input shape compiles once (jit's cache).
The optional self-ensemble (`ensemble=True`) is the x4 group that keeps the
epipolar geometry: identity, vertical flip, horizontal flip *with the views
swapped* (a mirrored left view is a right view), and both. Rotations would
turn rows into columns and are not used.

Scores are the original's stereo protocol (`metrics.measure_stereo`): the mean
of the two views' PSNRs and scikit-image's SSIM on the 6 channels, both on the
uint8-quantised images. The 'do nothing' baseline is the LR pair upsampled
with the same bilinear rule as the model's own skip connection
(`bilinear_upsample`: torch's `F.interpolate(mode='bilinear',
align_corners=False)`, half-pixel centres, edge-clamped, no antialiasing).

Folders (`pair_stereo_folders`, `StereoFolderDataset`) follow the original's
test layout: `<lq_dir>/<scene>/{lr0,lr1}.<ext>` and `<gt_dir>/<scene>/{hr0,hr1}.<ext>`
(0 = left, 1 = right); the pair is known by its scene ('<scene>' or 'a/b').
Views are read by the project's reader (`images.read_pair_pixels`, RGB).

Channel order: the model sees each view in `data.channel_order` ('rgb', or
'bgr' as the original's stereo datasets feed it, to reproduce its published
models; `channel_order_of(config)`). Folders are read, and saved pictures
written, through `to_channel_order`, so files on disk are always RGB. The
metrics do not depend on the order.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from nafnet_jax.evaluation import metrics
from nafnet_jax.training import partitioning

ApplyFn = Callable[[Any, jax.Array], jax.Array]
STEREO_CHANNELS = metrics.STEREO_CHANNELS
# What metrics.json says about the metrics of a stereo evaluation (eval.protocol/ssim do not apply).
STEREO_PROTOCOL = ("stereo: PSNR = mean of the left/right views' PSNR, SSIM = scikit-image SSIM on the "
                   "6-channel image, both on uint8 (clip, x255, round), peak 255")
ENSEMBLE_SIZE = 4
LQ_VIEWS = ("lr0", "lr1")
GT_VIEWS = ("hr0", "hr1")
VIEW_SUFFIXES = ("_L", "_R")
CHANNEL_ORDERS = ("rgb", "bgr")


# ---------------------------------------------------------------------------
# The model and its pairs.
# ---------------------------------------------------------------------------

def is_stereo_model(model: Any) -> bool:
    """True for a stereo model (6 channels: a left/right pair in, a pair out)."""
    return int(getattr(model, "img_channel", 3)) == STEREO_CHANNELS


def model_scale(model: Any) -> int:
    """The model's upscaling factor (1 for restoration models without a `scale`)."""
    return int(getattr(model, "scale", 1))


def split_views(pair: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(H, W, 6) -> (left (H, W, 3), right (H, W, 3))."""
    check_stereo_image(pair)
    return pair[..., :3], pair[..., 3:]


def join_views(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Left and right (H, W, 3) views -> one (H, W, 6) pair; the views must have one shape."""
    if np.shape(left) != np.shape(right) or np.ndim(left) != 3 or np.shape(left)[-1] != 3:
        raise ValueError(f"stereo views must be (H, W, 3) of one shape, got {np.shape(left)} and "
                         f"{np.shape(right)}")
    return np.concatenate([left, right], axis=-1)


def check_stereo_image(image: Any, what: str = "stereo image") -> None:
    """Raises ValueError unless `image` is (H, W, 6)."""
    if np.ndim(image) != 3 or np.shape(image)[-1] != STEREO_CHANNELS:
        raise ValueError(f"{what}: expected (H, W, 6) (left view in channels 0..2, right in 3..5), "
                         f"got shape {np.shape(image)}")


def swap_views(pair: np.ndarray) -> np.ndarray:
    """The pair with left and right exchanged (channels [3, 4, 5, 0, 1, 2])."""
    return np.concatenate([pair[..., 3:], pair[..., :3]], axis=-1)


def to_channel_order(pair: np.ndarray, order: str) -> np.ndarray:
    """An RGB (H, W, 6) pair in the model's channel order ('rgb': unchanged; 'bgr': each view reversed).

    Reversing is its own inverse, so the same call brings a 'bgr' pair back to RGB.
    """
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"channel order {order!r}; expected one of {CHANNEL_ORDERS}")
    return pair if order == "rgb" else pair[..., [2, 1, 0, 5, 4, 3]]


def channel_order_of(config: Any) -> str:
    """`config.data.channel_order` if the config has one, else 'rgb'."""
    data = config.get("data") if hasattr(config, "get") else None
    order = data.get("channel_order", "rgb") if data is not None and hasattr(data, "get") else "rgb"
    if order not in CHANNEL_ORDERS:
        raise ValueError(f"invalid config value data.channel_order={order!r}: expected one of {CHANNEL_ORDERS}")
    return order


def stereo_transform(pair: np.ndarray, index: int) -> np.ndarray:
    """The `index`-th (0..3) geometry-preserving transform of an (H, W, 6) pair.

    0: identity; 1: vertical flip; 2: horizontal flip with the views swapped; 3: both.
    Each is its own inverse (and they commute), so it also maps an output back.
    """
    if not 0 <= index < ENSEMBLE_SIZE:
        raise ValueError(f"stereo transform index {index}; expected 0..{ENSEMBLE_SIZE - 1}")
    if index & 1:
        pair = pair[::-1]
    if index & 2:
        pair = swap_views(pair[:, ::-1])
    return pair


def bilinear_upsample(image: np.ndarray, scale: int) -> np.ndarray:
    """(H, W, C) -> (scale*H, scale*W, C) bilinear, as torch's F.interpolate(align_corners=False).

    Half-pixel centres (source x = (i + 0.5) / scale - 0.5), coordinates clamped at the
    edges, no antialiasing: the rule of the model's skip connection
    (`nafnet_jax.models.upsample_bilinear`, tested equal), here in NumPy on the host so
    that validation's baseline compiles nothing per image shape. float32.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3:
        raise ValueError(f"bilinear_upsample expects an (H, W, C) image, got shape {image.shape}")
    if int(scale) == 1:
        return image
    for axis in (0, 1):
        size = image.shape[axis]
        src = np.clip((np.arange(size * scale, dtype=np.float64) + 0.5) / scale - 0.5, 0.0, size - 1)
        lo = np.floor(src).astype(np.int64)
        hi = np.minimum(lo + 1, size - 1)
        frac = (src - lo).astype(np.float32).reshape([-1 if a == axis else 1 for a in range(image.ndim)])
        image = np.take(image, lo, axis=axis) * (1 - frac) + np.take(image, hi, axis=axis) * frac
    return image.astype(np.float32)


# ---------------------------------------------------------------------------
# Inference.
# ---------------------------------------------------------------------------

class StereoRestorer:
    """Super-resolves (h, w, 6) stereo pairs with one jitted `apply_fn`, whole images only.

    Args:
      apply_fn: `apply_fn(params, x)`, x (N, h, w, 6) float32 in [0, 1] -> (N, s*h, s*w, 6).
      params: the parameters (a pytree of arrays).
      scale: the model's upscaling factor s (checked against each output).
      ensemble: the x4 stereo self-ensemble (see the module docstring).
      devices: local devices to split a batch of same-shape pairs over (params
        replicated); None uses the first local device.
    """

    def __init__(self, apply_fn: ApplyFn, params: Any, *, scale: int, ensemble: bool = False,
                 devices: Optional[Sequence[jax.Device]] = None):
        if int(scale) < 1:
            raise ValueError(f"scale must be a positive int, got {scale}")
        self.scale = int(scale)
        self.ensemble = bool(ensemble)
        self.trace_count = 0  # how many times apply_fn was traced (= compilations, one per shape)
        devices = list(devices) if devices else [jax.local_devices()[0]]
        self.num_devices = len(devices)
        if self.num_devices > 1:
            mesh = partitioning.create_mesh(devices=devices)
            self._batch_sharding: Any = partitioning.batch_sharding(mesh)
            self.params = jax.device_put(params, partitioning.replicated(mesh))
        else:
            self._batch_sharding = devices[0]
            self.params = jax.device_put(params, devices[0])

        def counted_apply(params, x):
            self.trace_count += 1  # trace time only
            return apply_fn(params, x).astype(jnp.float32)

        self._apply = jax.jit(counted_apply)

    def __call__(self, pair: np.ndarray) -> np.ndarray:
        """Super-resolves one (h, w, 6) pair; returns float32 (s*h, s*w, 6) clipped to [0, 1]."""
        return self.restore_many([pair])[0]

    def restore_many(self, pairs: Sequence[np.ndarray]) -> List[np.ndarray]:
        """Super-resolves pairs of one shape together (one batch split over the devices)."""
        pairs = [np.asarray(p, np.float32) for p in pairs]
        if not pairs:
            return []
        for p in pairs:
            check_stereo_image(p, "StereoRestorer input")
        shape = pairs[0].shape
        if any(p.shape != shape for p in pairs):
            raise ValueError(f"restore_many needs pairs of one shape, got {[p.shape for p in pairs]}")
        transforms = range(ENSEMBLE_SIZE) if self.ensemble else (0,)
        total: Optional[np.ndarray] = None
        for t in transforms:
            batch = np.stack([stereo_transform(p, t) for p in pairs])
            out = self._run(batch)
            out = np.stack([stereo_transform(o, t) for o in out])
            total = out if total is None else total + out
        out = total / len(transforms)
        want = (len(pairs), shape[0] * self.scale, shape[1] * self.scale, STEREO_CHANNELS)
        if out.shape != want:
            raise ValueError(f"the model mapped {shape} to {out.shape[1:]}, expected {want[1:]} "
                             f"(scale {self.scale})")
        return [np.clip(o, 0.0, 1.0) for o in out]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """One model call on (N, h, w, 6); N padded with repeats up to a multiple of the devices."""
        n = batch.shape[0]
        padded_n = -(-n // self.num_devices) * self.num_devices
        if padded_n != n:
            batch = np.concatenate([batch, np.repeat(batch[-1:], padded_n - n, axis=0)])
        x = jax.device_put(np.ascontiguousarray(batch), self._batch_sharding)
        return np.asarray(self._apply(self.params, x))[:n]


def check_stereo_eval_config(eval_config: Mapping[str, Any]) -> None:
    """Raises ValueError naming an eval setting a stereo SR model cannot honour.

    Stereo pairs run whole (no eval.bucket, no eval.tile) and are scored by the fixed
    stereo protocol: eval.protocol must be 'uint8' and eval.test_y_channel False
    (eval.ssim is not used; eval.crop_border is honoured).
    """
    for key, why in (("bucket", "padding a row changes SCAM's attention over the whole row"),
                     ("tile", "tiles cut SCAM's rows")):
        if eval_config.get(key):
            raise ValueError(f"invalid config value eval.{key}={eval_config[key]!r} for a stereo SR model: "
                             f"it runs whole images ({why}); set eval.{key}=None")
    if eval_config.get("protocol", "uint8") != "uint8" or eval_config.get("test_y_channel", False):
        key = "protocol" if eval_config.get("protocol", "uint8") != "uint8" else "test_y_channel"
        raise ValueError(f"invalid config value eval.{key}={eval_config[key]!r} for a stereo SR model: its "
                         f"metrics are fixed ({STEREO_PROTOCOL}); set eval.protocol='uint8', "
                         "eval.test_y_channel=False")


def make_stereo_restorer(model: Any, params: Any, eval_config: Mapping[str, Any],
                         devices: Optional[Sequence[jax.Device]] = None) -> StereoRestorer:
    """The `StereoRestorer` of a stereo model under an eval config (`eval.ensemble`: the x4 ensemble)."""
    check_stereo_eval_config(eval_config)
    return StereoRestorer(lambda p, x: model.apply({"params": p}, x), params, scale=model_scale(model),
                          ensemble=bool(eval_config.get("ensemble", False)), devices=devices)


def score_stereo(restored: np.ndarray, gt: np.ndarray, eval_config: Optional[Mapping[str, Any]] = None,
                 device: Any = None) -> Dict[str, float]:
    """{'psnr', 'ssim'} of one restored pair under the stereo protocol (host, float64).

    `eval_config` contributes only `crop_border` (0 in the published numbers); `device` is
    unused (the signature matches `evaluate.score_image`, so either can score).
    """
    del device
    crop = int(eval_config.get("crop_border", 0)) if eval_config is not None else 0
    if np.shape(restored) != np.shape(gt):
        raise ValueError(f"restored {np.shape(restored)} vs ground truth {np.shape(gt)}")
    return metrics.measure_stereo(restored, gt, crop_border=crop)


def input_psnr_stereo(lq: np.ndarray, gt: np.ndarray, eval_config: Optional[Mapping[str, Any]] = None) -> float:
    """Stereo PSNR of the bicubically upsampled LR pair (MATLAB's imresize, the usual SR baseline:
    a model that has learnt anything beats it; the bilinear skip alone scores lower)."""
    from nafnet_jax.data.resize import imresize_up  # late: keeps the data package off this import
    scale = np.shape(gt)[0] // max(np.shape(lq)[0], 1)
    return score_stereo(np.clip(imresize_up(np.asarray(lq, np.float64), scale), 0.0, 1.0).astype(np.float32),
                        gt, eval_config)["psnr"]


# ---------------------------------------------------------------------------
# Files and folders.
# ---------------------------------------------------------------------------

def view_file_names(name: str) -> Tuple[str, str]:
    """('<stem>_L.png', '<stem>_R.png') of a pair's name ('a/b' -> 'a_b_L.png', ...)."""
    stem = os.path.splitext(name.replace("/", "_").replace(os.sep, "_"))[0]
    return tuple(f"{stem}{suffix}.png" for suffix in VIEW_SUFFIXES)  # type: ignore[return-value]


def save_views(folder: str, name: str, pair: np.ndarray, overwrite: bool = False,
               channel_order: str = "rgb") -> Tuple[str, str]:
    """Writes both views of a float (H, W, 6) pair as 8-bit RGB PNGs (tensor2img's rounding).

    `channel_order` is the pair's (the model's) order; the files are RGB. Returns the two
    paths. Without `overwrite`, an existing file is never replaced (FileExistsError naming it).
    """
    from nafnet_jax.data import image_io
    check_stereo_image(pair)
    pixels = metrics.prepare(to_channel_order(pair, channel_order), "uint8")[0]
    paths = tuple(os.path.join(folder, n) for n in view_file_names(name))
    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{path} exists (pass --overwrite to replace it)")
    for path, view in zip(paths, (pixels[..., :3], pixels[..., 3:])):
        image_io.write_png(path, view, overwrite=overwrite)
    return paths  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class StereoPair:
    """The four files of one stereo test scene."""
    name: str
    lq: Tuple[str, str]  # (left, right)
    gt: Tuple[str, str]


def _scenes(folder: str, views: Tuple[str, str]) -> Dict[str, Tuple[str, str]]:
    """scene -> (left, right) file paths of a `<folder>/<scene>/{views}.<ext>` tree."""
    from nafnet_jax.data.images import BadDataError, list_images
    by_scene: Dict[str, Dict[str, str]] = collections.defaultdict(dict)
    for key, path in list_images(folder).items():
        scene, _, view = key.rpartition("/")
        if view in views and scene:
            by_scene[scene][view] = path
    if not by_scene:
        raise BadDataError(f"{folder}: no stereo scenes: expected <scene>/{views[0]}.png and "
                           f"<scene>/{views[1]}.png below it")
    incomplete = sorted(s for s, v in by_scene.items() if len(v) < 2)
    if incomplete:
        missing = [os.path.join(folder, s, f"{next(v for v in views if v not in by_scene[s])}.*")
                   for s in incomplete]
        raise BadDataError(f"{folder}: {len(incomplete)} scene(s) with one view only, missing: "
                           + ", ".join(missing[:5]) + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""))
    return {s: (v[views[0]], v[views[1]]) for s, v in by_scene.items()}


def pair_stereo_folders(lq_dir: str, gt_dir: str) -> List[StereoPair]:
    """Pairs `<lq_dir>/<scene>/{lr0,lr1}` with `<gt_dir>/<scene>/{hr0,hr1}` by scene, sorted.

    Raises BadDataError naming a scene without its counterpart or with a view missing.
    """
    from nafnet_jax.data.images import BadDataError
    lq, gt = _scenes(lq_dir, LQ_VIEWS), _scenes(gt_dir, GT_VIEWS)
    only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
    if only_lq or only_gt:
        parts = ([f"scene(s) without ground truth: {', '.join(only_lq[:5])}"] if only_lq else []) + \
                ([f"scene(s) without LR input: {', '.join(only_gt[:5])}"] if only_gt else [])
        raise BadDataError(f"{lq_dir} vs {gt_dir}: " + "; ".join(parts))
    return [StereoPair(s, lq[s], gt[s]) for s in sorted(lq)]


def looks_like_stereo_folder(folder: str) -> bool:
    """True if `folder` holds at least one `<scene>/lr0.*` or `<scene>/hr0.*` (a stereo layout)."""
    if not os.path.isdir(folder):
        return False
    for entry in sorted(os.listdir(folder)):
        sub = os.path.join(folder, entry)
        if os.path.isdir(sub) and any(os.path.splitext(f)[0] in (LQ_VIEWS[0], GT_VIEWS[0])
                                      for f in os.listdir(sub)):
            return True
    return False


def read_stereo_pair(left: str, right: str) -> np.ndarray:
    """The (H, W, 6) float32 [0, 1] pair of two view files (RGB each; sizes must agree)."""
    from nafnet_jax.data import image_io
    from nafnet_jax.data.images import BadDataError, read_pair_pixels
    views = [image_io.to_unit(read_pair_pixels(path)) for path in (left, right)]
    if views[0].shape != views[1].shape:
        raise BadDataError(f"stereo views differ in size: {left} is {views[0].shape[1]}x{views[0].shape[0]}, "
                           f"{right} is {views[1].shape[1]}x{views[1].shape[0]} (width x height)")
    return join_views(*views)


class StereoFolderDataset:
    """{'lq': (h, w, 6), 'gt': (s*h, s*w, 6) float32 [0, 1], 'name': scene} of two stereo folders.

    Layout as the original's test sets (see the module docstring); views in `channel_order`
    (the model's). This process's share: every `process_count`-th scene (of the first
    `max_images`) from `process_index`.
    """

    def __init__(self, lq_dir: str, gt_dir: str, process_index: int = 0, process_count: int = 1,
                 max_images: Optional[int] = None, channel_order: str = "rgb"):
        to_channel_order(np.zeros((1, 1, 6)), channel_order)  # validates the order
        self.channel_order = channel_order
        self.pairs = pair_stereo_folders(lq_dir, gt_dir)
        self.indices = list(range(len(self.pairs)))[:max_images][process_index::process_count]

    @property
    def names(self) -> List[str]:
        return [self.pairs[i].name for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for index in self.indices:
            pair = self.pairs[index]
            yield {"lq": to_channel_order(read_stereo_pair(*pair.lq), self.channel_order),
                   "gt": to_channel_order(read_stereo_pair(*pair.gt), self.channel_order), "name": pair.name}


__all__ = ["CHANNEL_ORDERS", "ENSEMBLE_SIZE", "STEREO_PROTOCOL", "StereoFolderDataset", "StereoPair",
           "StereoRestorer", "bilinear_upsample", "channel_order_of", "check_stereo_eval_config",
           "check_stereo_image", "input_psnr_stereo", "is_stereo_model", "join_views", "looks_like_stereo_folder",
           "make_stereo_restorer", "model_scale", "pair_stereo_folders", "read_stereo_pair", "save_views",
           "score_stereo", "split_views", "stereo_transform", "swap_views", "to_channel_order", "view_file_names"]
