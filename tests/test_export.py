"""Model export (nafnet_jax.tools.export): each artefact run in its own runtime against the Flax model."""

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from nafnet_jax.models import get_model
from nafnet_jax.tools import export
from nafnet_jax.training.checkpointing import save_model_checkpoint
from tiny_models import large_activation_params, random_params, tiny_model_and_params

SIZES = ((1, 37, 45), (2, 64, 48))  # (batch, H, W): an odd size, and a second batch and size
TLC_SIZE = (16, 16)  # the tiny model's TLC training size; boxes of 24 (level 0) and 12 (level 1)


def _images(batch, h, w, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (batch, h, w, 3)).astype(np.float32)


def _flax(model, params, images):
    return np.asarray(model.apply({"params": params}, images))


def _psnr(a, b):
    return 10 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2))


def _max_err(a, b):
    assert a.shape == b.shape, f"shape {a.shape} vs Flax {b.shape}"
    return float(np.max(np.abs(a - b)))


@pytest.fixture(scope="module")
def tiny():
    """{tlc: (model, params)}: the tiny one-level NAFNet with TLC off and on (beta/gamma non-zero)."""
    return {tlc: tiny_model_and_params(levels=1, tlc_train_size=TLC_SIZE if tlc else None)[:2]
            for tlc in (False, True)}


# --- the input contract ------------------------------------------------------------------------

def test_dynamic_export_of_a_tlc_model_starts_past_its_largest_box():
    assert export.min_dynamic_size(get_model("NAFNet-GoPro-width32")) == (385, 385)  # 1.5 * 256 + 1
    assert export.min_dynamic_size(get_model("NAFNet-SIDD-width32")) == (1, 1)
    assert export.min_dynamic_size(get_model("NAFNet-GoPro-width32", tlc_train_size=None)) == (1, 1)


def test_tlc_on_for_a_model_without_tlc_is_a_usage_error(tiny):
    with pytest.raises(export.UsageError, match="--tlc on"):
        export.export_model(tiny[False][0], tlc=True)


# --- StableHLO ------------------------------------------------------------------------------------

_FRESH_JAX = textwrap.dedent("""
    import sys
    import numpy as np
    from jax import export
    folder = sys.argv[1]
    results = {}
    for name in sorted(f for f in __import__("os").listdir(folder) if f.endswith(".stablehlo")):
        exported = export.deserialize(bytearray(open(f"{folder}/{name}", "rb").read()))
        inputs = np.load(f"{folder}/inputs.npz")
        for key in inputs.files:
            results[f"{name}:{key}"] = np.asarray(exported.call(inputs[key]))
        try:  # below the TLC model's minimum size (25): the shape constraints must refuse it
            exported.call(np.zeros((1, 20, 20, 3), np.float32))
            results[f"{name}:small_accepted"] = np.array(True)
        except Exception:
            results[f"{name}:small_accepted"] = np.array(False)
    assert not any(m.split(".")[0] in ("nafnet_jax", "flax") for m in sys.modules), "model code imported"
    np.savez(f"{folder}/outputs.npz", **results)
""")


@pytest.fixture(scope="module")
def stablehlo_run(tiny, tmp_path_factory):
    """Both TLC variants exported with symbolic (b, h, w), then run in one fresh jax-only process."""
    folder = tmp_path_factory.mktemp("stablehlo")
    for tlc, (model, params) in tiny.items():
        spec = export.input_spec(model)
        (folder / f"tlc_{tlc}").mkdir()
        path = export.write_stablehlo(export.export_fn(model, params), spec, str(folder / f"tlc_{tlc}"))
        os.replace(path, folder / f"tlc_{tlc}.stablehlo")
    np.savez(folder / "inputs.npz", **{f"{b}x{h}x{w}": _images(b, h, w) for b, h, w in SIZES})
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run([sys.executable, "-c", _FRESH_JAX, str(folder)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(np.load(folder / "outputs.npz"))


@pytest.mark.parametrize("tlc", [False, True], ids=["tlc_off", "tlc_on"])
def test_stablehlo_runs_without_the_model_code_at_any_size(tiny, stablehlo_run, tlc):
    model, params = tiny[tlc]
    for b, h, w in SIZES:
        got = stablehlo_run[f"tlc_{tlc}.stablehlo:{b}x{h}x{w}"]
        err = _max_err(got, _flax(model, params, _images(b, h, w)))
        assert err <= 1e-5, f"tlc={tlc} {b}x{h}x{w}: max abs error {err:.2e} vs the Flax model"


@pytest.mark.parametrize("dtype, min_db", [("float16", 50.0), ("bfloat16", 50.0)])
def test_stablehlo_half_precision_holds_at_a_realistic_activation_scale(dtype, min_db):
    # Block inputs reach |x| ~ 200 (the original's bottleneck reaches ~175): a LayerNorm summing
    # squares in float16 overflows there; the exported program must accumulate in float32.
    model, params, _ = tiny_model_and_params(levels=2, tlc_train_size=None)
    params = large_activation_params(params)
    images = _images(1, 37, 45)
    spec = export.input_spec(model)
    exported = export.export_stablehlo(export.export_fn(model, params, dtype=dtype), spec)
    got = np.asarray(exported.call(images))
    assert np.all(np.isfinite(got)), f"{dtype}: non-finite output"
    psnr = _psnr(got, _flax(model, params, images))
    assert psnr >= min_db, f"{dtype}: PSNR {psnr:.1f} dB vs float32 Flax"


def test_stablehlo_tlc_export_refuses_sizes_below_its_contract(stablehlo_run):
    assert not stablehlo_run["tlc_True.stablehlo:small_accepted"], "a 20x20 input ran through TLC's local branch"
    assert stablehlo_run["tlc_False.stablehlo:small_accepted"], "without TLC every size is accepted"


# --- TF SavedModel --------------------------------------------------------------------------------

def test_savedmodel_serving_signature_at_any_size(tiny, tmp_path):
    import tensorflow as tf
    model, params = tiny[True]
    path = export.write_savedmodel(export.export_fn(model, params), export.input_spec(model), str(tmp_path))
    assert os.path.basename(path) == export.SAVEDMODEL_VERSION
    serve = tf.saved_model.load(path).signatures["serving_default"]
    for b, h, w in SIZES:
        images = _images(b, h, w)
        got = serve(images=tf.constant(images))[export.OUTPUT_NAME].numpy()
        err = _max_err(got, _flax(model, params, images))
        assert err <= 1e-5, f"{b}x{h}x{w}: max abs error {err:.2e} vs the Flax model"


# --- TFLite ---------------------------------------------------------------------------------------

def _run_tflite(path, images):
    import tensorflow as tf
    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated" (for ai_edge_litert, not installed)
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], images)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


@pytest.mark.parametrize("size", [(37, 45), pytest.param((64, 48), marks=pytest.mark.slow)], ids=["37x45", "64x48"])
def test_tflite_with_tlc_float32_at_its_fixed_size(tiny, tmp_path, size):
    model, params = tiny[True]
    path = export.write_tflite(export.export_fn(model, params), export.input_spec(model, *size), str(tmp_path))
    images = _images(1, *size)
    err = _max_err(_run_tflite(path, images), _flax(model, params, images))
    assert err <= 1e-5, f"{size}: max abs error {err:.2e} vs the Flax model"


def test_tflite_with_tlc_where_its_box_covers_the_map(tiny, tmp_path):
    # 21x19 pads to 22x20: both levels' maps (22x20, 11x10) are inside their boxes (24, 12), so
    # TLC pools globally to (1, 1, 1, C), whose 1x1 conv the converter used to reject
    # ("'tfl.batch_matmul' op found invalid output rank"). As GoPro models at 256x256.
    model, params = tiny[True]
    path = export.write_tflite(export.export_fn(model, params), export.input_spec(model, 21, 19), str(tmp_path))
    images = _images(1, 21, 19)
    err = _max_err(_run_tflite(path, images), _flax(model, params, images))
    assert err <= 1e-5, f"21x19 (global pooling): max abs error {err:.2e} vs the Flax model"


def test_tflite_formulation_is_the_same_function(tiny):
    # The TFLite-only rewrite of the pooled 1x1 convs changes float32 rounding only.
    import jax
    model, params = tiny[False]
    fn = export.export_fn(model, params)
    tflite_fn = export.tflite_formulation(fn)
    images = _images(1, 21, 19)

    def convs(f):
        return str(jax.make_jaxpr(f)(images)).count("conv_general_dilated")

    assert convs(tflite_fn) == convs(fn) + 3, "not one rewritten pooled conv per block (3 blocks)"
    err = _max_err(np.asarray(jax.jit(tflite_fn)(images)), np.asarray(jax.jit(fn)(images)))
    assert err <= 1e-6, f"tflite_formulation changed the function by {err:.2e}"


def test_tflite_float16_weights_hold_50_db(tiny, tmp_path):
    model, params = tiny[True]
    path = export.write_tflite(export.export_fn(model, params), export.input_spec(model, 37, 45), str(tmp_path),
                               float16_weights=True)
    images = _images(1, 37, 45)
    psnr = _psnr(_run_tflite(path, images), _flax(model, params, images))
    assert psnr >= 50, f"float16-weight TFLite vs Flax float32: {psnr:.1f} dB"


def test_tflite_without_tlc_takes_any_size(tiny, tmp_path):
    import tensorflow as tf
    model, params = tiny[False]
    path = export.write_tflite(export.export_fn(model, params), export.input_spec(model), str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=path)
    index = interpreter.get_input_details()[0]["index"]
    for b, h, w in SIZES:
        images = _images(b, h, w)
        interpreter.resize_tensor_input(index, images.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, images)
        interpreter.invoke()
        got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
        err = _max_err(got, _flax(model, params, images))
        assert err <= 1e-5, f"{b}x{h}x{w}: max abs error {err:.2e} vs the Flax model"


def test_tflite_refuses_a_dynamic_size_with_tlc(tiny, tmp_path):
    model, params = tiny[True]
    with pytest.raises(export.UsageError, match="--height and --width, or --tlc off"):
        export.write_tflite(export.export_fn(model, params), export.input_spec(model), str(tmp_path))


# --- the command line -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny params-only checkpoint at step 7 holding raw and (different) EMA parameters."""
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=TLC_SIZE)
    ema = random_params(model, seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny"
    save_model_checkpoint(path, params, config, step=7, ema_params=ema)
    return {"path": str(path), "model": model, "params": params, "ema": ema}


def test_cli_exports_ema_weights_with_their_metadata(checkpoint, tmp_path):
    from jax import export as jax_export
    out = tmp_path / "exported"
    assert export.main([checkpoint["path"], str(out), "--format", "stablehlo", "--use_ema"]) == 0
    assert sorted(os.listdir(out)) == [export.METADATA_FILE, export.STABLEHLO_FILE]
    meta = json.loads((out / export.METADATA_FILE).read_text())
    assert meta["weights"] == {"checkpoint": checkpoint["path"], "step": 7, "params": "ema"}
    assert meta["tlc"] and meta["model"]["tlc_train_size"] == list(TLC_SIZE) and meta["dtype"] == "float32"
    assert meta["input"]["dynamic_size"] and meta["input"]["min_height"] == 25
    assert set(meta["versions"]) == {"jax", "nafnet_jax"}
    exported = jax_export.deserialize(bytearray((out / export.STABLEHLO_FILE).read_bytes()))
    images = _images(1, 37, 45)
    err = _max_err(np.asarray(exported.call(images)), _flax(checkpoint["model"], checkpoint["ema"], images))
    assert err <= 1e-5, f"the CLI's EMA export differs from the Flax model with EMA weights by {err:.2e}"


def test_cli_refuses_to_overwrite_without_the_flag(checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    status = export.main([checkpoint["path"], str(out), "--format", "stablehlo", "--height", "32", "--width", "32"])
    assert status == 2
    assert "--overwrite" in capsys.readouterr().err
    assert os.listdir(out) == ["mine.txt"] and not os.path.exists(tmp_path / ".exported.partial")
    assert export.main([checkpoint["path"], str(out), "--format", "stablehlo", "--height", "32", "--width", "32",
                        "--overwrite"]) == 0
    assert sorted(os.listdir(out)) == [export.METADATA_FILE, export.STABLEHLO_FILE]
    assert os.listdir(tmp_path) == ["exported"], "the old export or the partial one was left behind"


@pytest.mark.parametrize("argv, message", [
    (["--tlc", "on", "--model", "NAFNet-SIDD-width32"], "--model NAFNet-SIDD-width32 does not match"),
    (["--format", "tflite", "--dynamic"], "--height and --width, or --tlc off"),
    (["--height", "32"], "both --height and --width"),
    (["--step", "99"], "step 99 not in"),
], ids=["wrong_model", "tflite_dynamic", "height_only", "missing_step"])
def test_cli_usage_errors_are_one_line_and_exit_2(checkpoint, tmp_path, capsys, argv, message):
    args = [checkpoint["path"], str(tmp_path / "out")] + argv
    if "--format" not in argv:
        args += ["--format", "stablehlo"]
    assert export.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"{export.PROG}: error:") and message in err and "\n" not in err, err
    assert not os.path.exists(tmp_path / "out")


def test_cli_refuses_a_stereo_model_by_name(tmp_path, capsys):
    import jax
    from nafnet_jax.config import model_config_for
    from nafnet_jax.models import build_model
    config = model_config_for("NAFSSR-demo-x2", width=4, num_blks=1).to_dict()
    model = build_model(config)
    params = model.init(jax.random.key(0), np.zeros((1, 4, 4, 6), np.float32))["params"]
    path = tmp_path / "ssr"
    save_model_checkpoint(path, params, config, step=1)
    assert export.main([str(path), str(tmp_path / "out"), "--format", "stablehlo"]) == 2
    err = capsys.readouterr().err
    assert "NAFSSR model" in err and "U-Net only" in err, err
    assert not os.path.exists(tmp_path / "out")


def test_cli_use_ema_without_ema_names_the_checkpoint(tmp_path, capsys):
    model, params, config = tiny_model_and_params(levels=1, tlc_train_size=None)
    save_model_checkpoint(tmp_path / "raw_only", params, config)
    assert export.main([str(tmp_path / "raw_only"), str(tmp_path / "out"), "--format", "stablehlo",
                        "--use_ema"]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no EMA parameters" in err and str(tmp_path / "raw_only") in err and "\n" not in err, err
    assert not os.path.exists(tmp_path / "out")
