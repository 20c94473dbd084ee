"""ONNX export of a restoration model through `jax2onnx`, and a padded onnxruntime runner.

Why jax2onnx: it converts the traced jaxpr primitive by primitive to plain ONNX operators
(Conv with `group` for the depthwise convolutions, ReduceMean/ReduceSumSquare for the
LayerNorm, CumSum for TLC), and keeps symbolic dimensions symbolic. The other route,
`tf2onnx` on a `jax2tf` SavedModel, no longer works: jax 0.10's jax2tf only emits native
serialisation (one opaque `XlaCallModule` op) that tf2onnx cannot convert.

The input contract is the model's: NHWC float32 images in [0, 1] in, restored NHWC float32
images out (not clipped), same shape. A fixed-size export takes (1, H, W, C). A dynamic export
takes (N, H, W, C) with symbolic N, H, W, any size: the graph zero-pads H and W bottom/right to the
model's size multiple m (2**levels), as the U-Net itself does, and crops the output back. Why the
padding is ONNX operators around the converted model rather than traced JAX: jax2onnx names an
ONNX dimension only after an input dimension ("no origin recorded for symbolic dim
'4*floordiv(H + 3, 4)'", and an input declared (N, 4*a, 4*b, C) fails the same way on 'b'), while
the U-Net needs H and W provably divisible by m. So the model is converted on the padded image
viewed as (N, H/m, m, W/m, m, C) - there H = m*h as traced - and `_pad_and_crop_in_graph` puts
Pad, Reshape (that view: the same bytes) and Slice (the crop) before and after it. TLC (test-time
local converter) compares its box with the feature size in Python, so a TLC model exports at one
fixed size only.

Half precision: `dtype='float16'` builds the model with float16 compute (weights stored in
float16). Flax's LayerNorm computes its statistics in float32 whatever the compute dtype, and
jax2onnx keeps that; the global pools (`jnp.mean`) lose JAX's float32 accumulation in the
conversion, so `export_onnx` casts every float16 reduction to float32 and back. The graph then
reduces only in float32 (`reduction_dtypes` lists the input types of every Reduce* node; tests
check them): NAFNet's channel sums of squares overflow float16 at the activation scale of
trained models (|x| ~ 200).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

# Opset 21: CumSum (TLC) and float16 in every operator used; onnxruntime >= 1.16 runs it.
ONNX_OPSET = 21
# Keys of the ONNX metadata_props this module writes (all values are strings).
META_SIZE_MULTIPLE = "nafnet.size_multiple"
META_DTYPE = "nafnet.compute_dtype"
META_DYNAMIC = "nafnet.dynamic_hw"  # "true": symbolic N, H, W (padded to the size multiple inside)
INPUT_NAME = "image"
OUTPUT_NAME = "restored"
_CORE_INPUT, _CORE_OUTPUT = "nafnet_pad__image_blocks", "nafnet_pad__restored_padded"

_DTYPES = {"float32": jnp.float32, "float16": jnp.float16, "bfloat16": jnp.bfloat16}

Array = Any


def _require_jax2onnx():
    try:
        import jax2onnx  # noqa: F401  (the optional 'export' extra)
        import onnx  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("ONNX export needs the 'export' extra: pip install -e '.[export]' "
                          f"(missing: {err.name})") from err


def size_multiple(model: Any) -> int:
    """The multiple the U-Net pads H and W to (2**levels)."""
    return 2 ** len(model.enc_blk_nums)


def model_function(model: Any, params: Any, dtype: str = "float32") -> Callable[[Array], Array]:
    """A pure float32 NHWC -> float32 NHWC function of the model, computing in `dtype`.

    In float16/bfloat16 the weights are cast once (so the ONNX initialisers are half size) and the
    input is cast on entry; normalisation statistics stay in float32 (Flax's LayerNorm).
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} not one of {sorted(_DTYPES)}")
    from nafnet_jax.models import for_platform

    compute = _DTYPES[dtype]
    model = for_platform(model, None)  # the portable model: no platform-specific depthwise kernels
    if compute != jnp.float32:
        model = model.clone(dtype=compute)
        params = jax.tree.map(lambda p: jnp.asarray(p, compute), params)

    def fn(x: Array) -> Array:
        y = model.apply({"params": params}, x.astype(compute))
        return y.astype(jnp.float32)

    return fn


def _drop_empty_concat_inputs(proto: Any) -> int:
    """Removes Concat inputs that are empty by construction, then the nodes left unused.

    `jnp.pad(mode='edge')` (TLC) concatenates zero-length pieces; jax2onnx builds them with
    Reshape to a 0 dimension, which ONNX reads as 'copy this dimension' (length 1), and
    onnxruntime then rejects the Concat. An empty piece adds nothing, so dropping it is exact.
    Returns the number of inputs dropped.
    """
    declared = {v.name: v.type.tensor_type.shape for v in proto.graph.value_info}
    dropped = 0
    for node in proto.graph.node:
        if node.op_type != "Concat":
            continue
        keep = [name for name in node.input
                if not any(d.HasField("dim_value") and d.dim_value == 0
                           for d in getattr(declared.get(name), "dim", ()))]
        if keep and len(keep) < len(node.input):
            dropped += len(node.input) - len(keep)
            del node.input[:]
            node.input.extend(keep)
    if dropped:
        _prune_dead_nodes(proto)
    return dropped


def _prune_dead_nodes(proto: Any) -> None:
    needed = {o.name for o in proto.graph.output}
    live = []
    for node in reversed(proto.graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
    live.reverse()
    del proto.graph.node[:]
    proto.graph.node.extend(live)
    kept = {n for node in live for n in node.output} | {i.name for i in proto.graph.input}
    values = [v for v in proto.graph.value_info if v.name in kept]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(values)
    inits = [i for i in proto.graph.initializer if i.name in needed]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)


def _pad_and_crop_in_graph(proto: Any, multiple: int, channels: int) -> None:
    """Turns a graph of the blocked padded view into one of plain images, any size (in place).

    Before: input `_CORE_INPUT` (N, h, m, w, m, C), output `_CORE_OUTPUT` (N, m*h, m*w, C).
    After: input `INPUT_NAME` (N, H, W, C), output `OUTPUT_NAME` (N, H, W, C), with

        [Hp, Wp] = m * (([H, W] + m - 1) / m)           integer division: the padded size
        padded   = Pad(image, bottom/right Hp - H, Wp - W, zeros)
        blocks   = Reshape(padded, [N, Hp/m, m, Wp/m, m, C])   the same bytes
        restored = Slice(model(blocks), [0, 0] : [H, W] on axes 1, 2)

    The U-Net zero-pads bottom/right to m and crops itself, so the result equals the model on the
    original image.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph, m = proto.graph, int(multiple)
    core_in = next(v for v in graph.input if v.name == _CORE_INPUT)
    core_out = next(v for v in graph.output if v.name == _CORE_OUTPUT)
    name = "nafnet_pad__{}".format

    def const(key: str, values) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name(key)))
        return name(key)

    m_, m_minus_1 = const("m", [m]), const("m_minus_1", [m - 1])
    nodes = [
        helper.make_node("Shape", [INPUT_NAME], [name("hw")], start=1, end=3),
        helper.make_node("Add", [name("hw"), m_minus_1], [name("hw_up")]),
        helper.make_node("Div", [name("hw_up"), m_], [name("blocks_hw")]),
        helper.make_node("Mul", [name("blocks_hw"), m_], [name("padded_hw")]),
        helper.make_node("Sub", [name("padded_hw"), name("hw")], [name("pad_hw")]),
        # pads: begins of N, H, W, C then ends of N, H, W, C
        helper.make_node("Concat", [const("pads_before", [0, 0, 0, 0, 0]), name("pad_hw"),
                                    const("pads_after", [0])], [name("pads")], axis=0),
        helper.make_node("Pad", [INPUT_NAME, name("pads")], [name("padded")], mode="constant"),
        helper.make_node("Split", [name("blocks_hw")], [name("blocks_h"), name("blocks_w")], axis=0,
                         num_outputs=2),
        # Reshape's 0 copies the batch dimension
        helper.make_node("Concat", [const("zero", [0]), name("blocks_h"), m_, name("blocks_w"), m_,
                                    const("channels", [channels])], [name("blocks_shape")], axis=0),
        helper.make_node("Reshape", [name("padded"), name("blocks_shape")], [_CORE_INPUT]),
    ]
    crop = helper.make_node("Slice", [_CORE_OUTPUT, const("crop_starts", [0, 0]), name("hw"),
                                      const("crop_axes", [1, 2])], [OUTPUT_NAME])
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes + body + [crop])
    graph.value_info.extend([core_in, core_out])  # keep the converter's (symbolic) shapes, now internal
    dims = ("N", "H", "W", channels)
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, dims)
    restored = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, dims)
    graph.input.remove(core_in)
    graph.input.insert(0, image)
    graph.output.remove(core_out)
    graph.output.insert(0, restored)


def export_onnx(fn: Callable[[Array], Array], out_path: Union[str, Path], *, dynamic: bool,
                height: Optional[int] = None, width: Optional[int] = None, multiple: int = 1,
                channels: int = 3, opset: int = ONNX_OPSET, metadata: Optional[Mapping[str, Any]] = None,
                overwrite: bool = False) -> Path:
    """Exports `fn` (float32 NHWC images -> NHWC images) to an ONNX file.

    Args:
      fn: a pure JAX function of one (N, H, W, channels) float32 array (`model_function`).
      out_path: the .onnx file to write, weights embedded (one protobuf: under 2 GB, as every
        NAFNet; the largest published one holds ~0.3 GB of float32 weights).
      dynamic: True: the input is (N, H, W, channels) with symbolic N, H, W, any size (padded to
        a multiple of `multiple` inside the graph, the output cropped back; module docstring).
        False: the fixed shape (1, height, width, channels).
      height, width: the fixed size (required, and only allowed, when `dynamic` is False).
      multiple: the size multiple `fn` needs for a dynamic export (`size_multiple(model)`); `fn`
        must equal itself on the zero-padded input, cropped (the U-Net pads that way itself).
      opset: the ONNX opset (default `ONNX_OPSET`).
      metadata: extra string-valued entries for the model's metadata_props (model name, weights...).
      overwrite: replace an existing file (never done silently).
    Returns:
      The path written.
    Raises:
      FileExistsError if `out_path` exists and not `overwrite`; ValueError on inconsistent sizes.
    """
    _require_jax2onnx()
    import onnx
    from jax2onnx import to_onnx

    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise FileExistsError(f"{out_path} exists; pass overwrite=True to replace it")
    if dynamic:
        if height is not None or width is not None:
            raise ValueError(f"dynamic export takes no fixed size (got height={height}, width={width})")
        m = int(multiple)

        def traced(blocked: Array) -> Array:  # (N, h, m, W/m, m, C) -> H = m*h: divisible by m as traced
            n, h, _, w, _, c = blocked.shape
            return fn(blocked.reshape(n, h * m, w * m, c))

        proto = to_onnx(traced, [("N", "h", m, "w", m, channels)], model_name="nafnet", opset=opset,
                        input_names=[_CORE_INPUT], output_names=[_CORE_OUTPUT])
        _pad_and_crop_in_graph(proto, m, channels)
    else:
        if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
            raise ValueError(f"a fixed-size export needs positive int height and width, got "
                             f"height={height!r}, width={width!r} (or pass dynamic=True)")
        spec = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
        proto = to_onnx(fn, [spec], model_name="nafnet", opset=opset, input_names=[INPUT_NAME],
                        output_names=[OUTPUT_NAME])
    _drop_empty_concat_inputs(proto)
    _reduce_float16_in_float32(proto)
    meta: Dict[str, str] = {META_SIZE_MULTIPLE: str(int(multiple) if dynamic else 1),
                            META_DYNAMIC: json.dumps(bool(dynamic))}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out_path))
    return out_path


def export_model_onnx(model: Any, params: Any, out_path: Union[str, Path], *, dtype: str = "float32",
                      dynamic: bool = False, height: Optional[int] = None, width: Optional[int] = None,
                      opset: int = ONNX_OPSET, metadata: Optional[Mapping[str, Any]] = None,
                      overwrite: bool = False) -> Path:
    """Exports a `UNet` with its parameters (`export_onnx` on `model_function`).

    Args:
      dtype: 'float32' or 'float16' (compute and weights; input/output stay float32).
      Others: as `export_onnx`; the size multiple is the model's.
    Raises:
      ValueError for a TLC model with `dynamic=True` (TLC needs a fixed size: export at the
      deployment size, or build the model with `tlc_train_size=None`), or dtype 'bfloat16'.
    """
    if dynamic and getattr(model, "tlc_train_size", None) is not None:
        raise ValueError(f"TLC (tlc_train_size={tuple(model.tlc_train_size)}) compares its box with the "
                         "feature size when traced, so it exports at a fixed --height/--width only; "
                         "use a fixed size or turn TLC off for a dynamic-size ONNX file")
    if dtype == "bfloat16":  # ONNX's Conv has no bfloat16 type: onnxruntime refuses such a file at load
        raise ValueError("ONNX export: dtype bfloat16 is not supported (ONNX Conv takes no bfloat16 "
                         "tensors); use float16 or float32")
    meta = {META_DTYPE: dtype, **(metadata or {})}
    return export_onnx(model_function(model, params, dtype), out_path, dynamic=dynamic, height=height,
                       width=width, multiple=size_multiple(model), channels=model.img_channel, opset=opset,
                       metadata=meta, overwrite=overwrite)


def onnx_session(path: Union[str, Path], threads: Optional[int] = None) -> Any:
    """An onnxruntime CPU session for an exported file (`threads` intra-op threads, one inter-op)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_onnx(session: Any, images: np.ndarray) -> np.ndarray:
    """Runs an exported model on (N, H, W, C) float32 images: any size for a dynamic file, the
    exported one for a fixed-size file (the graph pads and crops itself)."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"expected (N, H, W, C) images, got shape {images.shape}")
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def _reduce_float16_in_float32(proto: Any) -> int:
    """Makes every Reduce* node that reads float16 read float32 (Cast before, Cast back after).

    jax2onnx lowers `jnp.mean` of a float16 map (the channel attention's global pool) to a
    float16 ReduceMean, dropping JAX's float32 accumulation; a 720p map of |x| ~ 200 sums to ~2e8,
    far past float16's 65504. Returns the number of nodes changed.
    """
    import onnx
    from onnx import TensorProto, helper

    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type for v in list(inferred.graph.value_info)
             + list(inferred.graph.input) + list(inferred.graph.output)}
    nodes, changed = [], 0
    for node in proto.graph.node:
        if not (node.op_type.startswith("Reduce") and types.get(node.input[0]) == TensorProto.FLOAT16):
            nodes.append(node)
            continue
        changed += 1
        wide_in, wide_out = f"{node.input[0]}__f32_{changed}", f"{node.output[0]}__f32_{changed}"
        nodes.append(helper.make_node("Cast", [node.input[0]], [wide_in], to=TensorProto.FLOAT))
        out = node.output[0]
        node.input[0], node.output[0] = wide_in, wide_out
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [wide_out], [out], to=TensorProto.FLOAT16))
    if changed:
        del proto.graph.node[:]
        proto.graph.node.extend(nodes)
    return changed


def reduction_dtypes(path_or_proto: Any) -> Dict[Tuple[str, str], int]:
    """Counts of (Reduce* op type, input element type name) in an ONNX graph, after shape inference.

    A float16 export is safe when every reduction reads float32 (the LayerNorm statistics).
    """
    import onnx

    proto = onnx.load(str(path_or_proto)) if isinstance(path_or_proto, (str, Path)) else path_or_proto
    proto = onnx.shape_inference.infer_shapes(proto)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(proto.graph.value_info) + list(proto.graph.input) + list(proto.graph.output)}
    types.update({i.name: i.data_type for i in proto.graph.initializer})
    counts: Dict[Tuple[str, str], int] = {}
    for node in proto.graph.node:
        if node.op_type.startswith("Reduce"):
            key = (node.op_type, onnx.TensorProto.DataType.Name(types.get(node.input[0], 0)))
            counts[key] = counts.get(key, 0) + 1
    return counts
