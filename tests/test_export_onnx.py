"""ONNX export (jax2onnx) verified in onnxruntime against the Flax model.

Skipped when the optional 'export' extra (jax2onnx, onnx, onnxruntime) is not installed: CI
installs '.[test]' only, so there these tests report as skipped, with that reason.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # the 'export' extra: absent in CI (.[test]), or present with a broken dependency
    import jax2onnx  # noqa: F401
    import onnxruntime  # noqa: F401
except ImportError as err:
    pytest.skip(f"optional ONNX dependencies not installed ({err}); run these tests after "
                "pip install -e '.[export]' (docs/deploy.md)", allow_module_level=True)

from nafnet_jax.tools import export_onnx as eo  # noqa: E402
from tiny_models import large_activation_params, tiny_model_and_params  # noqa: E402

SIZES = [(37, 45), (64, 48)]  # an odd size (padded by the model) and an even one


def _images(h, w, n=1, seed=0):
    return np.random.default_rng(seed).uniform(size=(n, h, w, 3)).astype(np.float32)


def _max_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _psnr(a, b, peak=1.0):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float(10 * np.log10(peak ** 2 / mse))


@pytest.mark.parametrize("tlc", [False, True], ids=["tlc_off", "tlc_on"])
def test_fixed_size_export_matches_flax(tmp_path, tlc):
    """Fixed-size files (TLC off and on, whose box is smaller than the map) at both sizes: <= 1e-5."""
    model, params, _ = tiny_model_and_params(levels=2, tlc_train_size=(16, 16) if tlc else None)
    reference = eo.model_function(model, params)
    for h, w in SIZES:
        path = eo.export_model_onnx(model, params, tmp_path / f"m_{h}x{w}.onnx", height=h, width=w)
        x = _images(h, w)
        got = eo.run_onnx(eo.onnx_session(path, threads=1), x)
        assert got.shape == x.shape
        err = _max_err(got, reference(x))
        assert err <= 1e-5, f"{h}x{w} tlc={tlc}: max abs err {err:.3g} vs Flax"


def test_dynamic_export_takes_plain_images_of_any_size(tmp_path):
    """One dynamic file: input (N, H, W, 3) with symbolic N, H, W; plain batches of 2 at 37x45 (odd:
    padded inside the graph) and 64x48, run by onnxruntime directly, within 1e-5 of Flax."""
    model, params, _ = tiny_model_and_params(levels=2, tlc_train_size=None)
    reference = eo.model_function(model, params)
    path = eo.export_model_onnx(model, params, tmp_path / "dyn.onnx", dynamic=True,
                                metadata={"nafnet.model": "tiny"})
    session = eo.onnx_session(path, threads=1)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta[eo.META_SIZE_MULTIPLE] == "4" and meta["nafnet.model"] == "tiny"
    (image,), (restored,) = session.get_inputs(), session.get_outputs()
    assert (image.name, image.shape) == ("image", ["N", "H", "W", 3]), (image.name, image.shape)
    assert (restored.name, restored.shape) == ("restored", ["N", "H", "W", 3]), (restored.name, restored.shape)
    for h, w in SIZES:
        x = _images(h, w, n=2)
        got = session.run(None, {"image": x})[0]
        assert got.shape == x.shape, f"{h}x{w}: output {got.shape}"
        err = _max_err(got, reference(x))
        assert err <= 1e-5, f"dynamic file at {h}x{w}: max abs err {err:.3g} vs Flax"


def test_dynamic_tlc_is_refused_by_name(tmp_path):
    model, params, _ = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    with pytest.raises(ValueError, match="TLC"):
        eo.export_model_onnx(model, params, tmp_path / "x.onnx", dynamic=True)


def test_bfloat16_is_refused_by_name(tmp_path):
    """ONNX's Conv has no bfloat16 type: refuse at export, not at the user's load."""
    model, params, _ = tiny_model_and_params(levels=1, tlc_train_size=None)
    with pytest.raises(ValueError, match="bfloat16"):
        eo.export_model_onnx(model, params, tmp_path / "x.onnx", dtype="bfloat16", height=16, width=16)
    assert not (tmp_path / "x.onnx").exists()


def test_existing_file_is_not_clobbered(tmp_path):
    model, params, _ = tiny_model_and_params(levels=1, tlc_train_size=None)
    path = tmp_path / "keep.onnx"
    path.write_bytes(b"user data")
    with pytest.raises(FileExistsError, match="keep.onnx"):
        eo.export_model_onnx(model, params, path, height=16, width=16)
    assert path.read_bytes() == b"user data"


# -------------------------------------------------------------------------------------------------
# Half precision at a realistic activation scale

def _block_input(model, params, x):
    _, state = model.apply({"params": params}, x, capture_intermediates=lambda m, _: m.name == "intro",
                           mutable=["intermediates"])
    return np.asarray(state["intermediates"]["intro"]["__call__"][0])


def _naive_float16_layer_norm(x):
    """LayerNorm statistics computed in float16 throughout (what a plain fp16 port does)."""
    x = np.asarray(x, np.float16)
    mean = np.sum(x, axis=-1, keepdims=True, dtype=np.float16) / np.float16(x.shape[-1])
    var = np.sum(np.square(x - mean), axis=-1, keepdims=True, dtype=np.float16) / np.float16(x.shape[-1])
    mean_sq = np.sum(np.square(x), axis=-1, keepdims=True, dtype=np.float16)
    return (x - mean) / np.sqrt(var + np.float16(1e-6)), mean_sq


def test_float16_export_reduces_in_float32_and_holds_50db(tmp_path):
    model, params, _ = tiny_model_and_params(levels=2, tlc_train_size=None)
    params = large_activation_params(params)
    h, w = SIZES[0]
    x = _images(h, w)
    block_in = _block_input(model, params, x)
    assert np.abs(block_in).max() > 150, f"block input max |x| {np.abs(block_in).max():.1f}: scale too small"
    # At this scale a float16 sum of squares over the channels overflows (65504): the test can fail.
    with np.errstate(over="ignore", invalid="ignore"):
        _, naive_sum_sq = _naive_float16_layer_norm(block_in)
    assert not np.all(np.isfinite(naive_sum_sq)), "naive float16 channel sums did not overflow"

    path = eo.export_model_onnx(model, params, tmp_path / "f16.onnx", dtype="float16", height=h, width=w)
    reductions = eo.reduction_dtypes(path)
    assert reductions and all(dtype == "FLOAT" for _, dtype in reductions), reductions
    reference = np.asarray(eo.model_function(model, params)(x))
    assert np.abs(reference).max() < 10, "ending conv did not bring the output back to image scale"
    got = eo.run_onnx(eo.onnx_session(path, threads=1), x)
    assert np.all(np.isfinite(got)), "float16 export produced inf/nan"
    psnr = _psnr(got, reference)
    assert psnr >= 50, f"float16 ONNX vs float32 Flax: PSNR {psnr:.1f} dB < 50"


def test_float16_mean_reductions_are_widened():
    """The conversion's float16 ReduceMean (global pool) is rewritten to read float32."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1, 2], keepdims=1)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 600, 600, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 1, 1, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert eo._reduce_float16_in_float32(proto) == 1
    onnx.checker.check_model(proto)
    assert eo.reduction_dtypes(proto) == {("ReduceMean", "FLOAT"): 1}
    import onnxruntime as ort
    session = ort.InferenceSession(proto.SerializeToString())
    x = np.full((1, 600, 600, 1), 200.0, np.float16)  # sums to 7.2e7: overflows float16
    assert float(session.run(None, {"x": x})[0].ravel()[0]) == 200.0


def test_cli_onnx_exports_ema_weights_with_dynamic_size(tmp_path):
    """`nafnet-export --format onnx --dynamic --tlc off --use_ema` writes a file equal to the Flax model."""
    from nafnet_jax.tools import export
    from nafnet_jax.training.checkpointing import save_model_checkpoint
    from tiny_models import random_params

    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=(16, 16))
    ema = random_params(model, seed=1)
    save_model_checkpoint(tmp_path / "ckpt", params, config, step=3, ema_params=ema)
    out = tmp_path / "out"
    argv = [str(tmp_path / "ckpt"), str(out), "--format", "onnx", "--dynamic", "--tlc", "off", "--use_ema"]
    assert export.main(argv) == 0
    plain = model.clone(tlc_train_size=None)
    x = _images(37, 45)
    got = eo.run_onnx(eo.onnx_session(out / export.ONNX_FILE, threads=1), x)
    err = _max_err(got, eo.model_function(plain, ema)(x))
    assert err <= 1e-5, f"CLI ONNX (EMA weights, TLC off) vs Flax: max abs err {err:.3g}"
