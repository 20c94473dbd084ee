"""Full-resolution evaluation: the library side of eval.py, also the trainer's validation.

`evaluate(apply_fn, params, dataset, eval_config)` restores every image of a
dataset (an iterable of {'lq', 'gt': (H, W, 3) float32 in [0, 1], 'name'}) and
scores it under the original's protocol; it does no file I/O (`on_result` sees
each restored image if a caller wants to save it). Scores are per image, then
averaged over images, as the original.

Devices and processes:
  * each process evaluates the images its dataset yields (make the dataset with
    `process_index`/`process_count`, e.g. `create_eval_dataset(...)`) and gets
    its own share's result; `gather_results` (a collective every process calls)
    merges the per-image records of all processes, as eval.py does;
  * with several local devices (`devices=`), consecutive images of one shape
    are restored together, one per device (params replicated); a last, short
    group is padded with repeats that are not scored.

Metrics: PSNR on the host in float64 (`metrics.psnr`); SSIM with the jitted
JAX version on the first local device in float32 (the original's 3D SSIM also
ran in float32 on the GPU). It agrees with the NumPy float64 one to ~1e-6 and
is faster than it even on a CPU.

Stereo SR models (NAFSSR: 6 channels, `evaluation.stereo`) are evaluated by the
same loop with a `StereoRestorer` (whole pairs, never padded or tiled) and the
stereo scorer (`stereo.score_stereo`: the original's NAFSSR metrics); `run_eval`
chooses them from the model, and writes both views of each pair with
--save_images (`<name>_L.png`, `<name>_R.png`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from nafnet_jax.evaluation import inference, metrics
from nafnet_jax.training.checkpointing import (PARAMETER_FIELDS, ModelMismatchError, architecture_differences,
                                               summarize_differences)

REPORT_FILES = ("metrics.json", "per_image.csv")
IMAGE_SUBDIR = "images"


def default_eval_config() -> ml_collections.ConfigDict:
    """The evaluation settings a config file's `config.eval` starts from (the original's GoPro/REDS protocol)."""
    return ml_collections.ConfigDict(dict(
        protocol="uint8",        # 'uint8' (GoPro, REDS: quantise, peak 255) or 'float' (SIDD: peak 1)
        ssim="3d",               # '3d' (published), 'standard' (per channel, valid) or 'y'
        crop_border=0,
        test_y_channel=False,    # PSNR (and SSIM) on the BT.601 Y channel
        tile=ml_collections.config_dict.placeholder(int),    # tiled inference (None: whole image)
        tile_overlap=32,
        tile_batch=4,
        bucket=ml_collections.config_dict.placeholder(int),  # None: exact shapes, as the original
        ensemble=False,          # x8 self-ensemble, x4 flips for stereo (not used by the published numbers)
    ))


def check_eval_config(eval_config: Mapping[str, Any]) -> None:
    """Raises ValueError naming a bad setting."""
    if eval_config["protocol"] not in metrics.PROTOCOLS:
        raise ValueError(f"eval.protocol={eval_config['protocol']!r}; expected one of {metrics.PROTOCOLS}")
    if eval_config["ssim"] not in metrics.SSIM_KINDS:
        raise ValueError(f"eval.ssim={eval_config['ssim']!r}; expected one of {metrics.SSIM_KINDS}")
    if int(eval_config["crop_border"]) < 0:
        raise ValueError(f"eval.crop_border={eval_config['crop_border']} must be >= 0")


def _as_str(name: Any) -> str:
    if isinstance(name, bytes):
        return name.decode("utf-8")
    if isinstance(name, np.ndarray):
        return _as_str(name.item())
    return str(name)


def _groups(dataset: Iterable[Mapping[str, Any]], size: int) -> Iterator[List[Dict[str, Any]]]:
    """Consecutive items of one lq shape, at most `size` at a time."""
    group: List[Dict[str, Any]] = []
    for item in dataset:
        item = {"lq": np.asarray(item["lq"], np.float32), "gt": np.asarray(item["gt"], np.float32),
                "name": _as_str(item["name"])}
        if group and (len(group) == size or item["lq"].shape != group[0]["lq"].shape):
            yield group
            group = []
        group.append(item)
    if group:
        yield group


def _allgather_records(records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Every process's per-image records, in process order (a collective: all processes call it)."""
    from jax.experimental import multihost_utils
    blob = np.frombuffer(json.dumps(records).encode("utf-8"), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([blob.size], np.int64))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:blob.size] = blob
    rows = np.asarray(multihost_utils.process_allgather(padded))
    merged: List[Dict[str, Any]] = []
    for row, size in zip(rows, sizes):
        merged.extend(json.loads(bytes(row[:int(size)]).decode("utf-8")))
    return merged


def summarize(per_image: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Means over images (NaN for an empty list)."""
    count = len(per_image)
    return {"psnr": float(np.mean([r["psnr"] for r in per_image])) if count else math.nan,
            "ssim": float(np.mean([r["ssim"] for r in per_image])) if count else math.nan,
            "count": count, "per_image": per_image}


@functools.lru_cache(maxsize=None)
def _jitted_ssim(kind: str, crop_border: int, test_y_channel: bool) -> Callable[..., jax.Array]:
    """One jitted SSIM per setting, kept across calls (periodic validation)."""
    return jax.jit(functools.partial(metrics.ssim_jax, kind=kind, crop_border=crop_border,
                                     test_y_channel=test_y_channel))


def score_image(restored: np.ndarray, gt: np.ndarray, eval_config: Mapping[str, Any],
          device: Optional[jax.Device] = None) -> Dict[str, Any]:
    """PSNR (host, float64) and SSIM (jitted, float32 on `device`) of one image under the eval protocol.

    'ssim' is a not yet fetched scalar `jax.Array`, so that the SSIMs of a batch's images run on
    their devices at the same time; `float()` it.
    """
    protocol, crop = eval_config["protocol"], int(eval_config["crop_border"])
    y_only = bool(eval_config["test_y_channel"])
    if restored.shape != gt.shape:
        raise ValueError(f"restored {restored.shape} vs ground truth {gt.shape}")
    a, peak = metrics.prepare(restored, protocol)
    b, _ = metrics.prepare(gt, protocol)
    device = device or jax.local_devices()[0]
    ssim_fn = _jitted_ssim(eval_config["ssim"], crop, y_only)
    return {"psnr": metrics.psnr(a, b, peak=peak, crop_border=crop, test_y_channel=y_only),
            "ssim": ssim_fn(jax.device_put(a.astype(np.float32), device),
                            jax.device_put(b.astype(np.float32), device), peak=jnp.float32(peak))}


def make_restorer(apply_fn: inference.ApplyFn, params: Any, eval_config: Mapping[str, Any], align: int = 16,
                  devices: Optional[Sequence[jax.Device]] = None) -> inference.Restorer:
    """The `Restorer` an eval config asks for (bucket/tile/ensemble); keep it to reuse its compilations."""
    check_eval_config(eval_config)
    return inference.Restorer(
        apply_fn, params, bucket=eval_config.get("bucket"), tile=eval_config.get("tile"),
        overlap=int(eval_config.get("tile_overlap", 32)), tile_batch=int(eval_config.get("tile_batch", 4)),
        align=align, ensemble=bool(eval_config.get("ensemble", False)), devices=devices)


# scorer(restored, gt, eval_config, device) -> {'psnr': float, 'ssim': float or a scalar jax.Array}
Scorer = Callable[[np.ndarray, np.ndarray, Mapping[str, Any], Optional[jax.Device]], Dict[str, Any]]


def evaluate(apply_fn: Optional[inference.ApplyFn], params: Any, dataset: Iterable[Mapping[str, Any]],
             eval_config: Mapping[str, Any], *, restorer: Optional[Any] = None,
             align: int = 16, devices: Optional[Sequence[jax.Device]] = None, progress: bool = False,
             on_result: Optional[Callable[[Dict[str, Any]], None]] = None,
             scorer: Optional[Scorer] = None) -> Dict[str, Any]:
    """Restores and scores every image of `dataset` (this process's share).

    Args:
      apply_fn: `apply_fn(params, x)` on (N, H, W, 3) float32 in [0, 1]
        (ignored when `restorer` is given).
      params: model parameters (ignored when `restorer` is given).
      dataset: iterable of {'lq', 'gt': (H, W, 3) float32 [0, 1], 'name': str/bytes}.
      eval_config: `default_eval_config()` fields.
      restorer: a `make_restorer(...)` result to reuse (its compilations and params), or
        any object with `restore_many(images)` and `num_devices` (e.g. a `stereo.StereoRestorer`).
      align: the model's total downsampling (tile alignment), 2 ** levels.
      devices: local devices to spread same-shape images over (default: one).
      progress: show a tqdm progress bar (process 0 only).
      on_result: called with {'name', 'restored' (H, W, 3) float32 unclipped,
        'psnr', 'ssim', 'height', 'width'} for each image (e.g. to save it).
      scorer: scores one restored image (default `score_image`, the eval config's
        protocol; `stereo.score_stereo` for stereo pairs).
    Returns:
      {'psnr': mean dB, 'ssim': mean, 'count': images, 'per_image': [{'name',
      'psnr', 'ssim', 'height', 'width'}, ...]} for this process's images.
    """
    check_eval_config(eval_config)
    if restorer is None:
        restorer = make_restorer(apply_fn, params, eval_config, align, devices)
    scorer = scorer or score_image
    metric_device = jax.local_devices()[0]

    bar = None
    if progress:
        from tqdm import tqdm
        total = len(dataset) if hasattr(dataset, "__len__") else None
        bar = tqdm(total=total, unit="img", desc="eval", disable=jax.process_index() != 0)
    per_image: List[Dict[str, Any]] = []
    for group in _groups(dataset, restorer.num_devices):
        restored = restorer.restore_many([item["lq"] for item in group])
        for item, out in zip(group, restored):
            if out.shape != item["gt"].shape:
                raise ValueError(f"{item['name']}: restored {out.shape} vs ground truth {item['gt'].shape}")
            scores = scorer(out, item["gt"], eval_config, metric_device)
            record = {"name": item["name"], "psnr": scores["psnr"], "ssim": float(scores["ssim"]),
                      "height": int(out.shape[0]), "width": int(out.shape[1])}
            per_image.append(record)
            if on_result is not None:
                on_result(dict(record, restored=out))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(psnr=f"{np.mean([r['psnr'] for r in per_image]):.3f}")
    if bar is not None:
        bar.close()
    return summarize(per_image)


def gather_results(result: Dict[str, Any]) -> Dict[str, Any]:
    """The result over all processes (a collective: every process calls it; a no-op for one)."""
    if jax.process_count() == 1:
        return result
    return summarize(_allgather_records(result["per_image"]))


# ---------------------------------------------------------------------------
# Paired folders (eval.py --lq_dir/--gt_dir, or a dataset without a builder).
# ---------------------------------------------------------------------------

class FolderDataset:
    """{'lq', 'gt': (H, W, 3) float32 [0, 1], 'name'} of two folders of paired images, read lazily.

    The one paired-folder reader (`nafnet_jax.data.sources.FolderPairSource`, as training's
    paired_folder dataset): files pair by stem (extensions may differ; a missing partner or a
    duplicate stem is an error naming the file), the name is that stem ('a', 'sub/b'), and the
    images are the same floats training and nafnet-restore see (`image_io.to_unit`).
    This process's share: every `process_count`-th pair (of the first `max_images`) starting at
    `process_index`. `len()` is the share.
    """

    def __init__(self, lq_dir: str, gt_dir: str, process_index: int = 0, process_count: int = 1,
                 max_images: Optional[int] = None):
        from nafnet_jax.data.sources import FolderPairSource
        self.source = FolderPairSource(gt_dir, lq_dir)
        self.indices = list(range(len(self.source)))[:max_images][process_index::process_count]

    @property
    def names(self) -> List[str]:
        return [self.source.pairs[i].name for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        from nafnet_jax.data.image_io import to_unit
        for index in self.indices:
            lq, gt, name = self.source.load(index)
            yield {"lq": to_unit(lq), "gt": to_unit(gt), "name": name}


# ---------------------------------------------------------------------------
# eval.py: checkpoint + config -> evaluation -> metrics.json, per_image.csv, images.
# ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """A config value as plain JSON-able data."""
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def resolve_model(config: Any, checkpoint_model_config: Mapping[str, Any]) -> Any:
    """The model to evaluate: `config.model` if the config has one (so eval-time settings such as
    `tlc_train_size` or `dtype` can be changed from the command line), else the checkpoint's.

    Raises ValueError if the config's architecture cannot hold the checkpoint's parameters.
    """
    from nafnet_jax.models import build_model
    saved = build_model(dict(checkpoint_model_config))
    wanted_config = config.get("model") if hasattr(config, "get") else None
    if wanted_config is None:
        return saved
    wanted = build_model(_plain(wanted_config))
    differences = architecture_differences(saved, wanted, PARAMETER_FIELDS, prefix="model.")
    if differences:
        raise ModelMismatchError("config.model cannot hold the checkpoint's parameters, "
                                 + summarize_differences(differences))
    return wanted


def existing_outputs(output_dir: str, save_images: bool = False) -> List[str]:
    """The files of an earlier evaluation in `output_dir` that a new one would replace."""
    found = [os.path.join(output_dir, n) for n in REPORT_FILES if os.path.exists(os.path.join(output_dir, n))]
    image_dir = os.path.join(output_dir, IMAGE_SUBDIR)
    if save_images and os.path.isdir(image_dir) and os.listdir(image_dir):
        found.append(image_dir)
    return found


def refuse_existing_outputs(output_dir: str, save_images: bool = False, overwrite: bool = False) -> None:
    """Raises FileExistsError naming an earlier result in `output_dir`, unless `overwrite`."""
    found = existing_outputs(output_dir, save_images)
    if found and not overwrite:
        raise FileExistsError(f"{found[0]} exists (an earlier evaluation); pass --overwrite to replace it "
                              "or choose another --output_dir")


def _image_file_name(name: str) -> str:
    stem = os.path.splitext(name.replace("/", "_").replace(os.sep, "_"))[0]
    return f"{stem}.png"


def write_reports(output_dir: str, result: Dict[str, Any], settings: Dict[str, Any]) -> None:
    """Writes metrics.json (means, count, settings) and per_image.csv into `output_dir`.

    Each file is written whole to a temporary name and renamed, so a crash never
    leaves a truncated report (nor destroys an earlier one).
    """
    import csv
    import io

    from nafnet_jax.training.checkpointing import write_text_atomic
    os.makedirs(output_dir, exist_ok=True)
    summary = {"psnr": result["psnr"], "ssim": result["ssim"], "count": result["count"], **settings}
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=["name", "psnr", "ssim", "height", "width"])
    writer.writeheader()
    for record in result["per_image"]:
        writer.writerow({k: record[k] for k in writer.fieldnames})
    write_text_atomic(os.path.join(output_dir, "per_image.csv"), table.getvalue())
    write_text_atomic(os.path.join(output_dir, "metrics.json"), json.dumps(summary, indent=2) + "\n")


def run_eval(config: Any, checkpoint: str, output_dir: str, *, split: Optional[str] = None,
             lq_dir: Optional[str] = None, gt_dir: Optional[str] = None, save_images: bool = False,
             max_images: Optional[int] = None, progress: bool = True,
             overwrite: bool = False, use_ema: bool = False) -> Dict[str, Any]:
    """What eval.py does: load, evaluate the whole split at full resolution, write the reports.

    Args:
      config: a config with `eval` (default_eval_config() fields), `data` and
        optionally `model` (see `resolve_model`).
      checkpoint: a train.py workdir / checkpoints dir / converted-weights dir.
      output_dir: where metrics.json, per_image.csv and images/ go (process 0
        writes the reports; each process saves its own images).
      split: the data split (default: config.data's eval split).
      lq_dir, gt_dir: evaluate two folders of paired images (`FolderDataset`) instead of config.data;
        for a stereo SR model, two folders of stereo scenes (`stereo.StereoFolderDataset`:
        `<scene>/{lr0,lr1}` and `<scene>/{hr0,hr1}`).
      save_images: also write the restored images as 8-bit PNGs (tensor2img's rounding); both
        views of a stereo pair as `<name>_L.png` and `<name>_R.png`.
      max_images: evaluate only the first N images of the split.
      overwrite: replace the reports/images of an earlier evaluation in `output_dir`
        (without it, their presence is an error raised before any work).
      use_ema: evaluate the checkpoint's EMA parameters (`MissingEntryError` naming the
        checkpoint if its run kept none).
    Returns:
      the global result of `evaluate` plus the settings written to metrics.json.

    A stereo SR model (6 channels, e.g. NAFSSR) is evaluated whole-pair with the original's
    stereo metrics (see `evaluation.stereo`); eval.protocol/ssim/test_y_channel do not apply to it
    and eval.bucket/tile are refused.
    """
    from nafnet_jax.evaluation import stereo
    from nafnet_jax.training import checkpointing
    from nafnet_jax.data import image_io

    eval_config = config.eval if "eval" in config else default_eval_config()
    check_eval_config(eval_config)
    refuse_existing_outputs(output_dir, save_images, overwrite)
    params, checkpoint_model = checkpointing.load_model_checkpoint(checkpoint, use_ema=use_ema)
    from nafnet_jax.models import for_platform
    from nafnet_jax.training.partitioning import devices_platform
    # Specialised for the devices it runs on (jax.local_devices()), not the default backend.
    model = for_platform(resolve_model(config, checkpoint_model), devices_platform(jax.local_devices()))
    is_stereo = stereo.is_stereo_model(model)
    if is_stereo:
        stereo.check_stereo_eval_config(eval_config)
        channel_order = stereo.channel_order_of(config)  # the model's view order (files are RGB)
    pi, pc = jax.process_index(), jax.process_count()
    if lq_dir or gt_dir:
        if not (lq_dir and gt_dir):
            raise ValueError("folder mode needs both --lq_dir and --gt_dir")
        if is_stereo:
            dataset: Any = stereo.StereoFolderDataset(lq_dir, gt_dir, pi, pc, max_images=max_images,
                                                      channel_order=channel_order)
        elif stereo.looks_like_stereo_folder(lq_dir):
            raise ValueError(f"--lq_dir {lq_dir} holds stereo scenes (<scene>/lr0, lr1) but the checkpoint's "
                             f"model takes {model.img_channel}-channel single images, not stereo pairs")
        else:
            dataset = FolderDataset(lq_dir, gt_dir, pi, pc, max_images=max_images)
        source = {"lq_dir": os.path.abspath(lq_dir), "gt_dir": os.path.abspath(gt_dir)}
    else:
        from nafnet_jax.data import create_eval_dataset
        data_config = config.data
        if max_images is not None:
            data_config = config.data.copy_and_resolve_references()
            data_config.eval_max_images = int(max_images)
        dataset = create_eval_dataset(data_config, split=split, process_index=pi, process_count=pc)
        from nafnet_jax.data.config import eval_split_of
        source = {"dataset": config.data.dataset, "split": split or eval_split_of(config.data)}

    on_result = None
    if save_images:
        image_dir = os.path.join(output_dir, IMAGE_SUBDIR)
        os.makedirs(image_dir, exist_ok=True)

        # overwrite=True: an earlier evaluation's images were refused above unless `overwrite`.
        def on_result(record):
            if is_stereo:
                stereo.save_views(image_dir, record["name"], record["restored"], overwrite=True,
                                  channel_order=channel_order)
                return
            pixels = metrics.prepare(record["restored"], "uint8")[0]
            image_io.write_png(os.path.join(image_dir, _image_file_name(record["name"])), pixels,
                               overwrite=True)

    start = time.perf_counter()
    if is_stereo:
        result = evaluate(None, None, dataset, eval_config, progress=progress, on_result=on_result,
                          restorer=stereo.make_stereo_restorer(model, params, eval_config, jax.local_devices()),
                          scorer=stereo.score_stereo)
    else:
        result = evaluate(
            lambda p, x: model.apply({"params": p}, x), params, dataset, eval_config,
            align=2 ** len(model.enc_blk_nums), devices=jax.local_devices(), progress=progress,
            on_result=on_result)
    result = gather_results(result)
    settings = {
        "checkpoint": os.path.abspath(checkpoint), "use_ema": bool(use_ema), **source,
        "eval": _plain(eval_config),
        "model": _plain(dict(checkpoint_model) if config.get("model") is None else config.model),
        "tlc_train_size": (None if getattr(model, "tlc_train_size", None) is None
                           else list(model.tlc_train_size)),
        "stereo": is_stereo, "scale": stereo.model_scale(model),
        **({"metrics": stereo.STEREO_PROTOCOL, "channel_order": channel_order} if is_stereo else {}),
        "processes": pc, "local_devices": jax.local_device_count(), "backend": jax.default_backend(),
        "jax_version": jax.__version__, "seconds": round(time.perf_counter() - start, 3),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if pi == 0:
        write_reports(output_dir, result, settings)
    return {**result, **settings}


__all__ = ["default_eval_config", "check_eval_config", "make_restorer", "evaluate", "score_image",
           "gather_results", "summarize",
           "architecture_differences", "FolderDataset", "resolve_model", "write_reports",
           "run_eval", "PARAMETER_FIELDS", "existing_outputs", "refuse_existing_outputs"]
