"""Validation during training, on every device of the training mesh.

The trainer's periodic full-resolution validation: it scores the eval split
under the config's eval protocol (`config.eval`: PSNR/SSIM as `evaluate.py`
computes them, with the model's TLC setting) and returns the same numbers as
`evaluate.evaluate` on one device, but

  * the parameters stay in their training sharding (FSDP-sharded ones too): the
    forward is jitted over the mesh and XLA gathers what each device needs;
  * images run one per device: images of one padded shape (the model's own
    zero padding to a multiple of its downsampling, or the eval bucket) form a
    global batch of `mesh size` slots; slots without an image hold masked
    dummies (zeros) that are never scored, so the mean covers exactly the eval
    set;
  * on several processes, every process runs the same sequence of batch shapes
    (a tiny all-gather of each process's next shape per batch), so all of them
    run the same number of batches, each with its own images.

Restored images come back to the host of the process that owns them (never to
one process), are cropped to their size and scored there, PSNR in float64 and
SSIM with the jitted JAX version on the device that restored the image, exactly
as `evaluate.evaluate` does. Per-process sums are combined with one all-gather.

A stereo SR model (6 channels, NAFSSR; chosen from the model, `stereo.is_stereo_model`)
runs the same way with three differences: images are never padded (SCAM attends along
whole rows, so a batch holds pairs of one exact shape and eval.bucket is refused), the
scores are the original's stereo metrics (`stereo.score_stereo`), and the input's own
score (`val/psnr_input`) is that of the LR pair upsampled bicubically (MATLAB's imresize,
the usual SR baseline; `stereo.input_psnr_stereo`). Sample pictures show the left view:
bilinearly upsampled LR | output | ground truth (in RGB whatever data.channel_order). eval.ensemble is
the x4 stereo ensemble there.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from nafnet_jax.evaluation import metrics, stereo
from nafnet_jax.training import partitioning
from nafnet_jax.evaluation.evaluate import check_eval_config, score_image
from nafnet_jax.evaluation.inference import bucket_shape, dihedral, dihedral_inverse, pad_bottom_right

Shape = Tuple[int, int]
# One process's proposal for the next batch: (has images, padded height, padded width).
Candidate = Tuple[int, int, int]
Agree = Callable[[Candidate], Optional[Shape]]


def choose_shape(candidates: np.ndarray) -> Optional[Shape]:
    """The padded shape every process runs next: the proposal of the first process that has images.

    Args:
      candidates: (processes, 3) int rows (has_images, padded_h, padded_w), in process order.
    Returns:
      (padded_h, padded_w), or None when no process has images left (validation is over).
    """
    for has, h, w in np.asarray(candidates).reshape(-1, 3):
        if has:
            return int(h), int(w)
    return None


def local_agree(candidate: Candidate) -> Optional[Shape]:
    """`choose_shape` for one process: its own proposal, no collective."""
    return choose_shape(np.asarray([candidate]))


def allgather_agree(candidate: Candidate) -> Optional[Shape]:
    """`choose_shape` over all processes (a small collective: every process calls it in lockstep)."""
    from jax.experimental import multihost_utils
    rows = multihost_utils.process_allgather(np.asarray(candidate, np.int64))
    return choose_shape(np.asarray(rows))


def schedule(items: Iterable[Dict[str, Any]], slots: int, padded_shape: Callable[[Shape], Shape],
             agree: Agree) -> Iterator[Tuple[Shape, List[Dict[str, Any]]]]:
    """Groups this process's images into batches whose shape all processes agree on.

    Reads `items` in order, keeping at most `slots` of them in a look-ahead
    buffer (memory stays bounded by one batch). Each round, this process
    proposes the padded shape of its oldest buffered image; `agree` returns the
    shape all processes run (the same on every process); this process then
    contributes its consecutive oldest images of that shape (up to `slots`,
    possibly none). Every round consumes at least one image somewhere, so the
    rounds end, on every process at the same time, when all images are used.

    Args:
      items: dicts with an 'lq' (H, W, C) array (and anything else, passed through).
      slots: this process's images per batch (its devices in the mesh).
      padded_shape: (H, W) -> the shape the image runs at.
      agree: `local_agree` (one process) or `allgather_agree` (several).
    Yields:
      (padded shape, this process's images for the batch: 0..slots, in input order).
    """
    iterator = iter(items)
    buffer: List[Tuple[Shape, Dict[str, Any]]] = []
    exhausted = False
    while True:
        while not exhausted and len(buffer) < slots:
            try:
                item = next(iterator)
            except StopIteration:
                exhausted = True
                break
            buffer.append((padded_shape(tuple(np.shape(item["lq"])[:2])), item))
        candidate = (1, *buffer[0][0]) if buffer else (0, 0, 0)
        shape = agree(candidate)
        if shape is None:
            if buffer:
                raise RuntimeError("validation schedule: processes disagree on the remaining images")
            return
        take = 0
        while take < min(len(buffer), slots) and buffer[take][0] == shape:
            take += 1
        yield shape, [item for _, item in buffer[:take]]
        buffer = buffer[take:]


class MeshRestorer:
    """Restores batches of same-padded-shape images over a mesh, one image per device.

    Args:
      model: the Flax model (`TrainSetup.model`: specialised for the mesh's platform).
      mesh: the training mesh; the global batch is split over all its axes.
      bucket: pad sizes up to multiples of this (as `eval.bucket`); None: exact shapes
        (the model's own zero padding to its downsampling factor, done here so that
        images of one padded shape batch together). Refused for a stereo model.
      pad_mode: NumPy pad mode beyond the zero band (bucket mode only).
      ensemble: x8 dihedral self-ensemble (as `eval.ensemble`); x4 stereo ensemble
        (`stereo.stereo_transform`) for a stereo model.

    Attributes `stereo` (a stereo SR model: no padding, stereo metrics) and `scale` (its
    upscaling factor; outputs are `scale` times the input's size) come from the model.
    """

    def __init__(self, model: Any, mesh: Mesh, *, bucket: Optional[int] = None, pad_mode: str = "reflect",
                 ensemble: bool = False):
        self.stereo = stereo.is_stereo_model(model)
        self.scale = stereo.model_scale(model)
        if self.stereo:
            stereo.check_stereo_eval_config({"bucket": bucket})  # the protocol is checked by `validate`
        # A stereo model takes any size as it is (align 1: no padding at all).
        self.align = 1 if self.stereo else 2 ** len(model.enc_blk_nums)
        self.bucket = bucket or None
        self.pad_mode = pad_mode
        self.ensemble = ensemble
        self.batch_sharding = partitioning.batch_sharding(mesh)
        # This process's rows of a global batch: one per local device of the mesh.
        self.slots = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
        self.channels = int(model.img_channel)
        self.trace_count = 0

        def forward(params: Any, x: jax.Array) -> jax.Array:
            self.trace_count += 1  # trace time only: one per batch shape
            return model.apply({"params": params}, x).astype(jnp.float32)

        # Params keep whatever sharding they have (replicated or FSDP): no gather to a host or device.
        self._forward = jax.jit(forward, out_shardings=self.batch_sharding)

    def padded_shape(self, shape: Shape) -> Shape:
        """The (H, W) an image of `shape` runs at (orientation as given)."""
        return bucket_shape(shape[0], shape[1], self.bucket or self.align)

    def restore(self, params: Any, images: Sequence[np.ndarray],
                shape: Shape) -> List[Tuple[np.ndarray, jax.Device]]:
        """Restores this process's images (at most `slots`, all of padded `shape`) in one global batch.

        Every process must call this with the same `shape` (see `schedule`), each with its own
        images (possibly none). Returns, per image, float32 (H, W, C) unclipped and the device
        that restored it.
        """
        if len(images) > self.slots:
            raise ValueError(f"{len(images)} images for {self.slots} local devices")
        transform = stereo.stereo_transform if self.stereo else dihedral
        inverse = stereo.stereo_transform if self.stereo else dihedral_inverse
        transforms = range(stereo.ENSEMBLE_SIZE if self.stereo else 8) if self.ensemble else (0,)
        s = self.scale
        total = [np.zeros((np.shape(im)[0] * s, np.shape(im)[1] * s, np.shape(im)[2]), np.float32)
                 for im in images]
        devices: List[jax.Device] = []
        for t in transforms:
            moved = [np.ascontiguousarray(transform(np.asarray(im, np.float32), t)) for im in images]
            ph, pw = transform(np.empty((*shape, 0)), t).shape[:2]  # the batch's shape, transformed
            batch = np.zeros((self.slots, ph, pw, self.channels), np.float32)  # dummies: zeros
            for i, im in enumerate(moved):
                batch[i] = pad_bottom_right(im, ph, pw, self.pad_mode, self.align)
            out = self._forward(params, jax.make_array_from_process_local_data(self.batch_sharding, batch))
            rows = _local_rows(out, len(moved))  # the dummies' rows stay on the devices
            devices = [device for _, device in rows]
            for acc, im, (row, _) in zip(total, moved, rows):
                acc += inverse(row[:im.shape[0] * s, :im.shape[1] * s], t)
        return [(acc / len(transforms), device) for acc, device in zip(total, devices)]


def _local_rows(x: jax.Array, count: int) -> List[Tuple[np.ndarray, jax.Device]]:
    """This process's first `count` rows of a batch-sharded global array, as (host array, its device)."""
    shards = {}
    for shard in x.addressable_shards:  # (one shard per row-block; replicas of a block are skipped)
        shards.setdefault(shard.index[0].start or 0, shard)
    rows: List[Tuple[np.ndarray, jax.Device]] = []
    for start in sorted(shards):
        if len(rows) >= count:
            break
        data = np.asarray(shards[start].data)
        rows.extend((data[i], shards[start].device) for i in range(data.shape[0]))
    return rows[:count]


def input_psnr(lq: np.ndarray, gt: np.ndarray, eval_config: Mapping[str, Any]) -> float:
    """PSNR of the degraded input itself under the protocol (the 'do nothing' baseline)."""
    protocol, crop = eval_config["protocol"], int(eval_config["crop_border"])
    a, peak = metrics.prepare(np.asarray(lq, np.float32), protocol)
    b, _ = metrics.prepare(np.asarray(gt, np.float32), protocol)
    return metrics.psnr(a, b, peak=peak, crop_border=crop, test_y_channel=bool(eval_config["test_y_channel"]))


def validate(restorer: MeshRestorer, params: Any, dataset: Iterable[Mapping[str, Any]],
             eval_config: Mapping[str, Any], *, agree: Optional[Agree] = None, with_input: bool = False,
             num_samples: int = 0) -> Dict[str, Any]:
    """Restores and scores this process's share of an eval set on the mesh.

    Args:
      restorer: a `MeshRestorer` for the model and mesh.
      params: the model parameters, in any sharding over the mesh (left as they are).
      dataset: this process's images: {'lq', 'gt': (H, W, C) float32 [0, 1], 'name'}.
      eval_config: `config.eval` (protocol, ssim, crop_border, test_y_channel; bucket and
        ensemble are the restorer's).
      agree: how processes agree on batch shapes (default: `local_agree` for one
        process, `allgather_agree` for several).
      with_input: also score the input itself ('psnr_input').
      num_samples: keep (lq, restored, gt) of this process's first N images.
    Returns:
      this process's sums: {'psnr_sum', 'ssim_sum', 'psnr_input_sum', 'count',
      'per_image': [{'name', 'psnr', 'ssim'}], 'samples': [(lq, out, gt)]} (stereo: the left
      views, lq upsampled, `stereo_sample`).
    """
    check_validation_config(eval_config)
    if getattr(restorer, "stereo", False):
        stereo.check_stereo_eval_config(eval_config)
    if agree is None:
        agree = local_agree if jax.process_count() == 1 else allgather_agree
    per_image: List[Dict[str, Any]] = []
    samples: List[Tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    psnr_input_sum = 0.0
    is_stereo = getattr(restorer, "stereo", False)
    score = stereo.score_stereo if is_stereo else score_image
    score_input = stereo.input_psnr_stereo if is_stereo else input_psnr
    for shape, group in schedule(dataset, restorer.slots, restorer.padded_shape, agree):
        lqs = [np.asarray(item["lq"], np.float32) for item in group]
        outs = restorer.restore(params, lqs, shape)
        records = []
        for item, lq, (out, device) in zip(group, lqs, outs):
            gt = np.asarray(item["gt"], np.float32)
            try:
                records.append({"name": _name(item), **score(out, gt, eval_config, device)})
            except ValueError as e:
                raise ValueError(f"{_name(item)}: {e}") from None
            if with_input:
                psnr_input_sum += score_input(lq, gt, eval_config)
            if len(samples) < num_samples:
                samples.append(stereo_sample(lq, out, gt) if is_stereo else (lq, out, gt))
        per_image.extend(dict(r, ssim=float(r["ssim"])) for r in records)  # fetched after all dispatched
    return {"psnr_sum": float(sum(r["psnr"] for r in per_image)),
            "ssim_sum": float(sum(r["ssim"] for r in per_image)),
            "psnr_input_sum": psnr_input_sum, "count": len(per_image), "per_image": per_image,
            "samples": samples}


def stereo_sample(lq: np.ndarray, out: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The left views of a stereo sample, the LR one upsampled bilinearly to the output's size."""
    scale = out.shape[0] // lq.shape[0]
    return stereo.bilinear_upsample(lq[..., :3], scale), out[..., :3], gt[..., :3]


def check_validation_config(eval_config: Mapping[str, Any]) -> None:
    """Raises ValueError naming an eval setting that validation during training cannot honour."""
    check_eval_config(eval_config)
    if eval_config.get("tile"):
        raise ValueError(f"invalid config value eval.tile={eval_config['tile']!r} for validation during "
                         "training: it runs whole images on the mesh; set eval.tile=None (or "
                         "train.eval_every=0) and run eval.py on a checkpoint for tiled evaluation")


def _name(item: Mapping[str, Any]) -> str:
    name = item.get("name", "")
    if isinstance(name, np.ndarray):
        name = name.item()
    return name.decode("utf-8") if isinstance(name, bytes) else str(name)


def sum_over_processes(values: np.ndarray) -> np.ndarray:
    """Element-wise sum over processes (a collective; identity for one process)."""
    if jax.process_count() == 1:
        return np.asarray(values, np.float64)
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64))).sum(axis=0)


def side_by_side(lq: np.ndarray, out: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """lq | output | gt side by side, uint8 (1, H, 3W, C), for TensorBoard."""
    row = np.concatenate([np.clip(a, 0, 1) for a in (lq, out, gt)], axis=1)
    return (row[None] * 255.0 + 0.5).astype(np.uint8)


# The metrics validation reports that `train.best_metric` may rank checkpoints by (higher is better);
# the '_ema' ones score the EMA parameters and exist only when the run keeps them (train.ema_decay > 0).
BEST_METRICS = ("val/psnr", "val/ssim", "val/psnr_ema", "val/ssim_ema")
DEFAULT_BEST_METRIC = "val/psnr"


def check_best_metric(train_config: Mapping[str, Any]) -> None:
    """Raises ValueError naming `train.best_metric` if validation cannot report it for this config."""
    metric = train_config.get("best_metric", DEFAULT_BEST_METRIC)
    if metric not in BEST_METRICS:
        raise ValueError(f"invalid config value train.best_metric={metric!r}: expected one of {BEST_METRICS}")
    if metric.endswith("_ema") and not float(train_config.get("ema_decay", 0.0)) > 0:
        raise ValueError(f"invalid config value train.best_metric={metric!r}: the run keeps no EMA parameters "
                         f"(train.ema_decay={train_config['ema_decay']}); set train.ema_decay > 0 "
                         "or rank by 'val/psnr'")


class Validator:
    """The trainer's periodic validation: the eval split, on the training mesh, every `eval_every` steps.

    Keeps the eval dataset, the compiled shapes and the input's own score
    (`val/psnr_input`, computed on the first validation) across validations.
    Every process evaluates its share of the split; sums are combined over
    processes, so `val/count` is the size of the eval split. Given EMA
    parameters too, it scores them the same way (`val/psnr_ema`, `val/ssim_ema`;
    the same compiled programs: they have the parameters' shapes and shardings).

    Args:
      config: the run's config (`data`, `eval`, `train.num_val_images`).
      setup: the run's `TrainSetup` (its platform-specialised model and mesh).
      dataset: this process's eval images (default: `create_eval_dataset` of the
        config's eval split, sharded over processes).
    """

    def __init__(self, config: Any, setup: Any, dataset: Optional[Iterable[Mapping[str, Any]]] = None):
        self.config = config
        if stereo.is_stereo_model(setup.model):  # before any data work or training step
            stereo.check_stereo_eval_config(config.eval)
        if dataset is None:
            from nafnet_jax.data import create_eval_dataset
            dataset = create_eval_dataset(config.data, split=config.data.eval_split,
                                          process_index=jax.process_index(),
                                          process_count=jax.process_count())
        self.dataset = dataset
        ev = config.eval
        check_validation_config(ev)
        self.restorer = MeshRestorer(setup.model, setup.mesh, bucket=ev.get("bucket"),
                                     ensemble=bool(ev.get("ensemble", False)))

        self.input_psnr_sum: Optional[float] = None

    def _scores(self, params: Any, with_input: bool, num_samples: int) -> Tuple[np.ndarray, Dict[str, Any]]:
        """(summed [psnr, ssim, psnr_input, count] over processes, this process's `validate` result)."""
        result = validate(self.restorer, params, self.dataset, self.config.eval, with_input=with_input,
                          num_samples=num_samples)
        if with_input:
            self.input_psnr_sum = result["psnr_input_sum"]
        sums = sum_over_processes(np.array([result["psnr_sum"], result["ssim_sum"], self.input_psnr_sum,
                                            result["count"]]))
        return sums, result

    def evaluate(self, params: Any, ema_params: Any = None) -> Dict[str, Any]:
        """{'val/psnr', 'val/ssim', 'val/psnr_input', 'val/count'} over all processes, and 'samples'
        (of `params`); with `ema_params`, also 'val/psnr_ema' and 'val/ssim_ema'."""
        sums, result = self._scores(params, with_input=self.input_psnr_sum is None,
                                    num_samples=int(self.config.train.num_val_images))
        total = max(sums[3], 1.0)
        out = {"val/psnr": sums[0] / total, "val/ssim": sums[1] / total, "val/psnr_input": sums[2] / total,
               "val/count": sums[3]}
        if ema_params is not None:
            ema_sums, _ = self._scores(ema_params, with_input=False, num_samples=0)
            out.update({"val/psnr_ema": ema_sums[0] / total, "val/ssim_ema": ema_sums[1] / total})
        out["samples"] = result["samples"]
        return out

    def __call__(self, params: Any, step: int, writer: Any, ema_params: Any = None) -> Dict[str, float]:
        """Validates (`evaluate`), writes the scalars and sample images at `step`; returns the scalars."""
        result = self.evaluate(params, ema_params)
        samples = result.pop("samples")
        if self.restorer.stereo and stereo.channel_order_of(self.config) == "bgr":  # pictures in RGB
            samples = [tuple(view[..., ::-1] for view in sample) for sample in samples]
        writer.write_scalars(step, result)
        if samples:
            writer.write_images(step, {f"val/sample_{i}": side_by_side(*s) for i, s in enumerate(samples)})
        return result


__all__ = ["BEST_METRICS", "DEFAULT_BEST_METRIC", "MeshRestorer", "Validator", "allgather_agree", "check_best_metric",
           "check_validation_config", "choose_shape",
           "input_psnr", "local_agree",
           "schedule", "side_by_side", "stereo_sample", "sum_over_processes", "validate"]
