"""nafnet-export: a trained checkpoint as a deployable artefact (StableHLO, TF SavedModel, TFLite, ONNX).

    python -m nafnet_jax.export CHECKPOINT OUT (--model NAME | --config CONFIG) \\
        --format stablehlo|savedmodel|tflite|onnx [--dtype float32|float16|bfloat16] [--tlc on|off] \\
        [--use_ema] [--step N] [--height H --width W | --dynamic] [--overwrite]

OUT is a folder; it always gets `metadata.json` (model, weights source, dtype,
TLC, input contract, versions) beside the artefact:

    stablehlo   OUT/model.stablehlo   bytes of `jax.export.Exported.serialize()`
    savedmodel  OUT/1/                TF SavedModel (TF Serving's versioned layout), signature
                                      'serving_default': images -> {'restored': ...}
    tflite      OUT/model.tflite      from that SavedModel (a TLC model: fixed size only,
                                      --height/--width); --dtype float16 stores float16 weights
    onnx        OUT/model.onnx        through jax2onnx (nafnet_jax.tools.export_onnx), input
                                      'image', output 'restored'

Input contract of every artefact: NHWC float32 images in [0, 1], 3 channels;
the output is the restored images, same shape, float32, not clipped. Any
batch and height/width with --dynamic (the default). A model with TLC
(test-time local converter) is exported dynamic for sizes larger than its
largest pooling box only (`min_dynamic_size`; below it the pooling becomes a
global mean), and tflite/onnx take it at a fixed --height/--width only; or
export with --tlc off. OUT is never replaced without --overwrite; the new
export is written beside it and swapped in when complete. Errors are one line
(exit 2 for usage). docs/deploy.md shows how to load each artefact.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import logging
import os
import shutil
import sys
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from nafnet_jax import cli
from nafnet_jax.cli import UsageError

PROG = "nafnet-export"
FORMATS = ("stablehlo", "savedmodel", "tflite", "onnx")
DTYPES = ("float32", "float16", "bfloat16")
METADATA_FILE = "metadata.json"
STABLEHLO_FILE = "model.stablehlo"
SAVEDMODEL_VERSION = "1"  # TF Serving loads <model_base_path>/<version>/
TFLITE_FILE = "model.tflite"
ONNX_FILE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "restored"

ExportFn = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """The input shapes an artefact accepts: fixed (height, width) or symbolic with a minimum size."""
    height: Optional[int] = None  # None: any height >= min_height
    width: Optional[int] = None
    min_height: int = 1
    min_width: int = 1
    batch: Optional[int] = None  # None: any batch size

    @property
    def dynamic(self) -> bool:
        return self.height is None

    def constraints(self) -> Tuple[str, ...]:
        """Symbolic-shape constraints (jax.export / jax2tf) for the dims 'h' and 'w'."""
        return tuple(f"{dim} >= {least}" for dim, least in (("h", self.min_height), ("w", self.min_width))
                     if least > 1)

    def describe(self) -> Dict[str, Any]:
        shape = ["batch" if self.batch is None else self.batch] + (
            ["height", "width", 3] if self.dynamic else [self.height, self.width, 3])
        return {"layout": "NHWC", "dtype": "float32", "range": [0.0, 1.0], "shape": shape,
                "dynamic_size": self.dynamic,
                "min_height": self.min_height if self.dynamic else self.height,
                "min_width": self.min_width if self.dynamic else self.width,
                "output": "restored images, same shape, float32, not clipped"}


# ---------------------------------------------------------------------------
# The function every format serialises.
# ---------------------------------------------------------------------------

def export_model(model: Any, tlc: Optional[bool] = None, dtype: str = "float32") -> Any:
    """`model` as exported: portable (platform None, no custom_vjp), TLC kept/removed, compute `dtype`.

    Raises:
      UsageError if `tlc` is True and the model has no `tlc_train_size`, or `dtype` is unknown.
    """
    import jax.numpy as jnp

    from nafnet_jax.models import for_platform
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    if tlc is True and model.tlc_train_size is None:
        raise UsageError("--tlc on: the model has no tlc_train_size (set one in its config)")
    changes: Dict[str, Any] = {"dtype": None if dtype == "float32" else jnp.dtype(dtype)}
    if tlc is False:
        changes["tlc_train_size"] = None
    return for_platform(model, None).clone(**changes)


def export_fn(model: Any, params: Any, tlc: Optional[bool] = None, dtype: str = "float32") -> ExportFn:
    """A pure `f(images (N, H, W, 3) float32 in [0, 1]) -> restored (N, H, W, 3) float32`.

    The parameters are closed over (constants of the exported program), cast to `dtype`. The
    input is zero-padded bottom/right to a multiple of 2**levels here, as the model itself does,
    but written so that a symbolic H, W stays provable (padded = m * ceil(H / m)); the output is
    cropped back with a static-rank slice. Numerically identical to `model.apply`.
    """
    import jax
    import jax.numpy as jnp

    model = export_model(model, tlc, dtype)
    params = jax.tree.map(lambda p: jnp.asarray(p, model.dtype or jnp.float32), params)
    multiple = 2 ** len(model.enc_blk_nums)

    def restore(images: jax.Array) -> jax.Array:
        n, h, w, c = images.shape
        hp, wp = multiple * ((h + multiple - 1) // multiple), multiple * ((w + multiple - 1) // multiple)
        padded = jax.lax.dynamic_update_slice(jnp.zeros((n, hp, wp, c), images.dtype), images, (0, 0, 0, 0))
        out = model.apply({"params": params}, padded)
        return jax.lax.slice(out, (0, 0, 0, 0), (n, h, w, c)).astype(jnp.float32)

    return restore


def min_dynamic_size(model: Any) -> Tuple[int, int]:
    """The smallest (H, W) a size-polymorphic export of `model` accepts.

    Without TLC: (1, 1). With TLC, each level's pool switches to a global mean when its box
    covers the feature map, a choice fixed at trace time; a dynamic export takes the local-box
    branch, valid once the input exceeds every level's box (box_l * 2**l), e.g. 385 for
    NAFNet-GoPro (training crops 256: boxes of 1.5 x 256).
    """
    from nafnet_jax.models import tlc_kernels
    if model.tlc_train_size is None:
        return 1, 1
    kernels = tlc_kernels(model.tlc_train_size, len(model.enc_blk_nums))
    return (max(k[0] * 2 ** level for level, k in enumerate(kernels)) + 1,
            max(k[1] * 2 ** level for level, k in enumerate(kernels)) + 1)


def input_spec(model: Any, height: Optional[int] = None, width: Optional[int] = None) -> InputSpec:
    """Fixed when height/width are given, else dynamic with `min_dynamic_size(model)`."""
    if (height is None) != (width is None):
        raise UsageError("give both --height and --width, or neither (--dynamic)")
    if height is not None:
        if height <= 0 or width <= 0:
            raise UsageError(f"--height {height} --width {width}: expected positive sizes")
        return InputSpec(height, width)
    return InputSpec(None, None, *min_dynamic_size(model))


# ---------------------------------------------------------------------------
# Formats: each writes its artefact into a folder (which exists and is empty).
# ---------------------------------------------------------------------------

def _dims(spec: InputSpec) -> str:
    """The symbolic shape of the input: 'b, h, w, 3' with the fixed sizes filled in."""
    h, w = ("h", "w") if spec.dynamic else (spec.height, spec.width)
    return f"{'b' if spec.batch is None else spec.batch}, {h}, {w}, 3"


def export_stablehlo(fn: ExportFn, spec: InputSpec) -> Any:
    """`jax.export.Exported` of `fn` for (b, h, w, 3) float32 (symbolic b, and h, w unless fixed)."""
    import jax
    import jax.numpy as jnp
    from jax import export
    shape = export.symbolic_shape(_dims(spec), constraints=spec.constraints())
    return export.export(jax.jit(fn))(jax.ShapeDtypeStruct(shape, jnp.float32))


def write_stablehlo(fn: ExportFn, spec: InputSpec, directory: str) -> str:
    """Writes `directory/model.stablehlo` (load: `jax.export.deserialize(bytes).call(images)`)."""
    path = os.path.join(directory, STABLEHLO_FILE)
    with open(path, "wb") as f:
        f.write(export_stablehlo(fn, spec).serialize())
    return path


def tf_module(fn: ExportFn, spec: InputSpec) -> Any:
    """A `tf.Module` whose `serve` maps images -> {'restored': ...} through jax2tf (native serialization)."""
    import tensorflow as tf
    from jax.experimental import jax2tf
    converted = jax2tf.convert(fn, polymorphic_shapes=[f"({_dims(spec)})"],
                               polymorphic_constraints=spec.constraints(), with_gradient=False)
    module = tf.Module()
    signature = tf.TensorSpec([spec.batch, spec.height, spec.width, 3], tf.float32, name=INPUT_NAME)
    module.serve = tf.function(lambda images: {OUTPUT_NAME: converted(images)}, input_signature=[signature],
                               autograph=False)
    return module


def write_savedmodel(fn: ExportFn, spec: InputSpec, directory: str) -> str:
    """Writes a SavedModel to `directory/1` (TF Serving layout) with a 'serving_default' signature."""
    import tensorflow as tf
    module = tf_module(fn, spec)
    path = os.path.join(directory, SAVEDMODEL_VERSION)
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve.get_concrete_function()})
    return path


def check_tflite_spec(spec: InputSpec) -> None:
    """Raises UsageError for shapes the TFLite converter cannot take: a dynamic size with TLC.

    The converter (TF 2.21) translates the StableHLO that jax2tf embeds. With a symbolic size,
    TLC's pooling lowers to two ops it has no translation for: the box differences
    (`s[:, k:, k:]`, a slice with a symbolic end) become `stablehlo.dynamic_gather` ("'vhlo.
    dynamic_gather_v1' op is not part of the vhlo support yet"), and its integral image (a cumsum
    over a symbolic length) becomes a `stablehlo.custom_call` to `dynamic_reduce_window`
    ("'vhlo.custom_call_v1' op is not part of the vhlo support yet"). Writing the slices with
    `lax.slice` removes the first; the cumsum has no dynamic formulation the converter takes but a
    triangular matmul, O(H*W*(H+W)) per pool. Without TLC a symbolic batch, H and W convert.
    """
    if spec.dynamic and spec.constraints():  # constraints come from TLC's minimum size
        raise UsageError("--format tflite: a dynamic size needs a model without TLC (its pooling lowers to a "
                         "dynamic gather and a dynamic cumsum TFLite cannot convert); give --height and "
                         "--width, or --tlc off")


def _pooled_conv1x1_as_conv(next_fun: Callable[..., Any], args: Tuple[Any, ...], kwargs: Dict[str, Any],
                            context: Any) -> Any:
    """Flax method interceptor: a 1x1 `Conv2d` on an (1, 1, 1, C) map runs as `lax.conv`.

    The model writes every 1x1 conv as a `dot_general` over the channels. On a map whose batch,
    height and width are all statically 1 (the channel attention's global pool at batch 1), the
    TFLite converter (TF 2.21) folds it into a rank-4 `tfl.batch_matmul` and then rejects its
    own op ("found invalid output rank, expected 3 but got 4"); a reshape to (1, C) @ (C, C) is
    folded the same way. As a convolution it becomes a plain `tfl.conv_2d`. Same products, summed
    in another order (float32 rounding only). Every other call runs the module unchanged.
    """
    from flax import linen as nn
    from jax import lax

    from nafnet_jax.models.layers import Conv2d
    module = context.module
    if not (isinstance(module, Conv2d) and context.method_name == "__call__" and args):
        return next_fun(*args, **kwargs)
    x = args[0]
    pooled = all(isinstance(d, int) and d == 1 for d in x.shape[:-1])  # symbolic dims are not ints
    geometry = (tuple(module.kernel_size), module.strides, module.groups, module.padding)
    pointwise = geometry == ((1, 1), 1, 1, 0)
    if not (pooled and pointwise):
        return next_fun(*args, **kwargs)
    kernel = module.get_variable("params", "kernel")
    bias = module.get_variable("params", "bias") if module.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=module.dtype)
    y = lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + (-1,))


def tflite_formulation(fn: ExportFn) -> ExportFn:
    """`fn` with the model's pooled 1x1 convs written so TFLite converts them (`_pooled_conv1x1_as_conv`).

    Selected by the TFLite exporter only: the model, and every other artefact, keeps its matmul.
    """
    from flax import linen as nn

    def restore(images: Any) -> Any:
        with nn.intercept_methods(_pooled_conv1x1_as_conv):
            return fn(images)

    return restore


def write_tflite(fn: ExportFn, spec: InputSpec, directory: str, float16_weights: bool = False) -> str:
    """Writes `directory/model.tflite`, converted from a SavedModel (kept only in a temporary folder).

    Dynamic (any batch, H, W; `interpreter.resize_tensor_input`) without TLC; a fixed size is
    exported with batch 1 (`spec.batch` None becomes 1). See `check_tflite_spec`.
    """
    import tempfile

    import tensorflow as tf
    check_tflite_spec(spec)
    if not spec.dynamic:
        spec = dataclasses.replace(spec, batch=spec.batch or 1)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        module = tf_module(tflite_formulation(fn), spec)
        concrete = module.serve.get_concrete_function()
        tf.saved_model.save(module, tmp, signatures={"serving_default": concrete})
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if float16_weights:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        content = converter.convert()
    path = os.path.join(directory, TFLITE_FILE)
    with open(path, "wb") as f:
        f.write(content)
    return path


def write_artefact(fmt: str, model: Any, params: Any, spec: InputSpec, directory: str,
                   tlc: Optional[bool] = None, dtype: str = "float32") -> str:
    """Writes the artefact of `fmt` for `model` with `params` into `directory`; returns its path.

    tflite: `dtype` float16 means float16 weights with float32 compute. onnx: through
    `nafnet_jax.tools.export_onnx.export_model_onnx`.
    """
    if fmt == "onnx":
        try:
            from nafnet_jax.tools import export_onnx
        except ImportError as e:
            raise UsageError(f"--format onnx: {cli.error_message(e)}") from e
        try:
            return os.fspath(export_onnx.export_model_onnx(
                export_model(model, tlc), params, os.path.join(directory, ONNX_FILE), dtype=dtype,
                dynamic=spec.dynamic, height=spec.height, width=spec.width))
        except ValueError as e:  # a size the ONNX path cannot export (e.g. TLC with a dynamic size)
            raise UsageError(f"--format onnx: {cli.error_message(e)}") from e
    if fmt == "tflite":
        return write_tflite(export_fn(model, params, tlc), spec, directory, float16_weights=dtype == "float16")
    fn = export_fn(model, params, tlc, dtype)
    if fmt == "stablehlo":
        return write_stablehlo(fn, spec, directory)
    if fmt == "savedmodel":
        return write_savedmodel(fn, spec, directory)
    raise UsageError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------
# Checkpoint -> model, params.
# ---------------------------------------------------------------------------

def load_config_file(path: str) -> Any:
    """`get_config()` of a config file; 'file.py:arg' passes arg (see `cli.load_config_file`)."""
    return cli.load_config_file(path)


def load_weights(checkpoint: str, step: Optional[int] = None, use_ema: bool = False,
                 report: Optional[Callable[[str], None]] = None) -> Tuple[Any, Dict[str, Any], int]:
    """(params, the checkpoint's model config, the step loaded): the given step, else the best or
    newest intact one (`checkpointing.restore_newest_intact`, damaged steps reported and skipped)."""
    from nafnet_jax.training import checkpointing
    return checkpointing.load_model_checkpoint_step(checkpoint, step=step, use_ema=use_ema, report=report)


def resolve_model(model_config: Mapping[str, Any], name: Optional[str], config_path: Optional[str]) -> Any:
    """The model to export: `--model` (which must match the checkpoint), `--config`'s model, or the
    checkpoint's own."""
    from nafnet_jax.evaluation.evaluate import resolve_model as config_model
    from nafnet_jax.models import build_model, get_model
    from nafnet_jax.tools.restore import architecture_mismatch
    from nafnet_jax.training import checkpointing
    if name:
        differences = architecture_mismatch(name, model_config)
        if differences:
            raise UsageError(f"--model {name} does not match the checkpoint: "
                             + checkpointing.summarize_differences(differences))
        return get_model(name)
    if config_path:
        return config_model(load_config_file(config_path), model_config)
    return build_model(dict(model_config))


def _versions() -> Dict[str, str]:
    import jax
    versions = {"jax": jax.__version__}
    try:
        from importlib.metadata import version
        versions["nafnet_jax"] = version("nafnet_jax")
    except Exception:  # not installed as a distribution (a source checkout)
        versions["nafnet_jax"] = "unknown"
    return versions


def metadata(model: Any, fmt: str, dtype: str, spec: InputSpec, source: Mapping[str, Any],
             name: Optional[str] = None) -> Dict[str, Any]:
    """What metadata.json records: model (name, architecture), weights source, dtype (the compute
    dtype; tflite's float16 is float16 weights over float32 compute), TLC, input contract, versions, date."""
    from nafnet_jax.training.checkpointing import _jsonable
    fields = {f: getattr(model, f) for f in ("block", "width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums",
                                            "img_channel", "tlc_train_size")}
    compute = "float32" if fmt == "tflite" else dtype
    return {"format": fmt, "model_name": name, "model": _jsonable(fields), "weights": dict(source),
            "dtype": dtype, "compute_dtype": compute, "weights_dtype": dtype,
            "tlc": model.tlc_train_size is not None, "input": spec.describe(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "versions": _versions()}


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a train.py workdir, its checkpoints dir, one step's dir, or converted weights")
    p.add_argument("output", help="output folder (refused if it exists and is not empty, unless --overwrite)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--model", help="published model name; must agree with the checkpoint's architecture")
    which.add_argument("--config", help="config file (configs/*.py[:arg]) whose model holds the checkpoint's "
                                        "parameters (default: the checkpoint's own model)")
    p.add_argument("--format", required=True, choices=FORMATS)
    p.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="compute dtype (tflite: float16 = float16 weights, float32 compute)")
    p.add_argument("--tlc", choices=("on", "off"), default=None,
                   help="test-time local converter (default: as the model)")
    p.add_argument("--use_ema", "--use-ema", action="store_true", help="export the checkpoint's EMA parameters")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: best, else newest intact)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--dynamic", action="store_true", help="any height/width (the default; a TLC model: see above)")
    size.add_argument("--height", type=int, default=None, help="fixed input height (with --width)")
    p.add_argument("--width", type=int, default=None, help="fixed input width (with --height)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT (the new export is written beside it, then swapped in)")
    p.add_argument("--debug", action="store_true", help=f"print tracebacks with errors (also: {cli.DEBUG_ENV}=1)")
    return p


def _refuse_existing(path: str, overwrite: bool) -> bool:
    """Whether OUT holds something (then only with --overwrite); checks it can be written."""
    occupied = os.path.isfile(path) or (os.path.isdir(path) and bool(os.listdir(path)))
    if occupied and not overwrite:
        raise UsageError(f"output {path} already exists and is not empty; pass --overwrite to replace it")
    if os.path.isfile(path):
        raise UsageError(f"output {path} is a file, not a folder; remove it first")
    cli.check_output_dir(path, "OUT")
    return occupied


def _install(partial: str, path: str, occupied: bool) -> None:
    """Moves the finished export to `path`, swapping out the old one (then deleted) if any."""
    from nafnet_jax.training.checkpointing import swap_directories
    if occupied:
        swap_directories(partial, path)
        shutil.rmtree(partial)  # now holds the old export
        return
    if os.path.isdir(path):
        os.rmdir(path)  # empty
    os.replace(partial, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The nafnet-export command (exit statuses: see nafnet_jax.cli)."""
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()
    return cli.run_main(lambda: _export(args), PROG, sys.argv if argv is None else argv)


@contextlib.contextmanager
def _quiet_loggers(*names: str) -> Iterator[None]:
    """Python loggers `names` at ERROR level inside the block."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _export(args: argparse.Namespace) -> int:
    output = os.path.abspath(args.output)
    with cli.preflight():
        if args.format == "tflite" and args.dtype == "bfloat16":
            raise UsageError("--format tflite: --dtype bfloat16 is not supported (float32 or float16 weights)")
        occupied = _refuse_existing(output, args.overwrite)
        with _quiet_loggers("absl"):  # Orbax's read-only notices are not news to a CLI user
            params, model_config, step = load_weights(args.checkpoint, args.step, args.use_ema, report=_warn)
        model = resolve_model(model_config, args.model, args.config)
        from nafnet_jax.models.unet import UNet
        if not isinstance(model, UNet):
            raise UsageError(f"{args.checkpoint} holds a {type(model).__name__} model: {PROG} exports the "
                             "NAFNet/Baseline U-Net only (stereo super-resolution export is not implemented)")
        tlc = None if args.tlc is None else args.tlc == "on"
        compute = "float32" if args.format == "tflite" else args.dtype
        exported_model = export_model(model, tlc, compute)
        spec = input_spec(exported_model, args.height, args.width)
        if args.format in ("tflite", "onnx") and not spec.dynamic:
            spec = dataclasses.replace(spec, batch=1)  # what their fixed-size exports take
        if args.format == "tflite":
            check_tflite_spec(spec)
    partial = os.path.join(os.path.dirname(output), f".{os.path.basename(output)}.partial")
    if os.path.exists(partial):  # left by an earlier interrupted export
        shutil.rmtree(partial)
    os.makedirs(partial)
    try:
        # jax2onnx logs a traceback for each optional example plugin whose dependency is absent, and
        # onnx_ir a line per untyped shape constant it skips; neither concerns the exported model.
        with _quiet_loggers("jax2onnx.plugins.plugin_system", "onnx_ir.serde"):
            artefact = write_artefact(args.format, model, params, spec, partial, tlc, args.dtype)
        source = {"checkpoint": os.path.abspath(args.checkpoint), "step": int(step),
                  "params": "ema" if args.use_ema else "raw"}
        info = metadata(exported_model, args.format, args.dtype, spec, source,
                        name=args.model or model_config.get("name"))
        with open(os.path.join(partial, METADATA_FILE), "w") as f:
            json.dump(info, f, indent=2)
            f.write("\n")
        _install(partial, output, occupied)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    print(f"exported {args.format} ({args.dtype}) to {os.path.join(output, os.path.relpath(artefact, partial))}")
    return cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
