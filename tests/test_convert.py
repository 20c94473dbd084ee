"""The PyTorch <-> Flax converter: key table, layouts, strictness, files and command line.

References: the original's state dicts (spandrel's NAFNet, tests/torch_reference.py's
Baseline) loaded with `strict=True`, and explicit index formulas for the layouts.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from nafnet_jax.tools import convert
from nafnet_jax.tools.convert import (StateDictMismatchError, flax_to_torch, load_torch_checkpoint,
                                save_torch_checkpoint, torch_to_flax)
from nafnet_jax.models import ABLATION_LADDER, Baseline, NAFNet, UNet
from nafnet_jax import torch_reference as ref
from nafnet_jax.torch_reference import install_torchvision_stub

LEVELS = dict(width=4, enc_blk_nums=[1, 2], middle_blk_num=1, dec_blk_nums=[2, 1])


def _torch_nafnet():
    torch.manual_seed(0)
    return ref.perturb_identity_params_(ref.spandrel_nafnet(**LEVELS), seed=0)


def _numpy_state_dict(module) -> dict:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _random_flax_params(model, seed: int = 0):
    """Every parameter random (a round trip must not depend on init structure)."""
    abstract = convert.abstract_params(model)
    rng = np.random.default_rng(seed)
    flat = {p: rng.normal(size=s.shape).astype(s.dtype) for p, s in abstract.items()}
    return {"params": convert.unflatten_params(flat)}


def _assert_trees_equal(a, b):
    fa, fb = convert.flatten_params(a), convert.flatten_params(b)
    assert sorted(fa) == sorted(fb)
    for path in fa:
        np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg=path)


# -------------------------------------------------------------------------------------------------
# The key table


def assert_key_table_maps(model, torch_keys) -> None:
    """Every Flax parameter of `model` maps through KEY_TABLE to one of `torch_keys` and back, and
    together they name exactly `torch_keys` (the original's state dict)."""
    mapped = {}
    for path in convert.abstract_params(model):
        key, _ = convert.flax_path_to_torch_key(path)
        assert convert.torch_key_to_flax_path(key)[0] == path, f"{path} -> {key} does not map back"
        mapped[key] = path
    assert set(mapped) == torch_keys, (f"only in Flax: {sorted(set(mapped) - torch_keys)}; "
                                       f"only in PyTorch: {sorted(torch_keys - set(mapped))}")


@pytest.mark.parametrize("kind", ["nafnet", "baseline"])
def test_key_table_names_exactly_the_original_state_dict(kind):
    """Mapping every Flax parameter through KEY_TABLE gives the original's keys, and back."""
    if kind == "nafnet":
        torch_keys, model = set(ref.spandrel_nafnet(**LEVELS).state_dict()), NAFNet(**LEVELS)
    else:
        torch_keys = set(ref.Baseline(dw_expand=2, **LEVELS).state_dict())
        model = Baseline(dw_expand=2, **LEVELS)
    assert_key_table_maps(model, torch_keys)


def test_every_key_table_row_is_used():
    """No dead rows: each row's PyTorch pattern matches some real NAFNet, Baseline or NAFSSR key."""
    keys = set(ref.spandrel_nafnet(**LEVELS).state_dict())
    keys |= set(ref.Baseline(**LEVELS).state_dict())
    keys |= set(ref.NAFNetSR(up_scale=2, width=4, num_blks=1, dual=True, fusion_to=1000).state_dict())
    for row, (torch_regex, _) in zip(convert.KEY_TABLE, convert._RULE_RES):
        assert any(torch_regex.fullmatch(k) for k in keys), f"row {row[0]!r} matches no real key"


def test_conv_weights_become_hwio():
    """intro (O,I,3,3), depthwise conv2 (C,1,3,3) -> (3,3,1,C), 2x2 downs, bias-free 1x1 ups."""
    sd = _numpy_state_dict(_torch_nafnet())
    params = torch_to_flax(sd, NAFNet(**LEVELS))["params"]
    for key, path in [("intro.weight", ("intro", "kernel")),
                      ("encoders.1.0.conv2.weight", ("encoders_1_0", "conv2", "kernel")),
                      ("downs.0.weight", ("downs_0", "kernel")),
                      ("ups.1.0.weight", ("ups_1", "kernel"))]:
        w, k = sd[key], params
        for p in path:
            k = k[p]
        o, i, kh, kw = w.shape
        assert k.shape == (kh, kw, i, o), f"{key}: {k.shape}"
        corners = [(0, 0, 0, 0), (o - 1, i - 1, kh - 1, kw - 1), (o // 2, i - 1, 0, kw - 1)]
        for oo, ii, hh, ww in corners:
            assert k[hh, ww, ii, oo] == w[oo, ii, hh, ww], f"{key}[{oo},{ii},{hh},{ww}]"
    assert "bias" not in params["ups_1"] and params["encoders_1_0"]["conv2"]["kernel"].shape[2] == 1


def test_beta_gamma_and_layer_norm_params():
    sd = _numpy_state_dict(_torch_nafnet())
    block = torch_to_flax(sd, NAFNet(**LEVELS))["params"]["decoders_0_1"]
    np.testing.assert_array_equal(block["beta"], sd["decoders.0.1.beta"].reshape(-1))
    np.testing.assert_array_equal(block["gamma"], sd["decoders.0.1.gamma"][0, :, 0, 0])
    np.testing.assert_array_equal(block["norm2"]["scale"], sd["decoders.0.1.norm2.weight"])
    np.testing.assert_array_equal(block["sca"]["bias"], sd["decoders.0.1.sca.1.bias"])


# -------------------------------------------------------------------------------------------------
# Round trips and strictness


@pytest.mark.parametrize("kind", ["nafnet", "baseline_dw1", "baseline_dw2"])
def test_flax_to_torch_loads_strictly_and_round_trips_exactly(kind):
    if kind == "nafnet":
        model, torch_model = NAFNet(**LEVELS), ref.spandrel_nafnet(**LEVELS)
    else:
        dw = int(kind[-1])
        model, torch_model = Baseline(dw_expand=dw, **LEVELS), ref.Baseline(dw_expand=dw, **LEVELS)
    variables = _random_flax_params(model)
    sd = flax_to_torch(variables, model)
    torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    back = torch_to_flax(_numpy_state_dict(torch_model), model)
    _assert_trees_equal(back, variables)


@pytest.mark.parametrize("rung", sorted(ABLATION_LADDER))
def test_ablation_rungs_round_trip_exactly(rung):
    """Rungs without LayerNorm or attention have fewer keys; the table still fits."""
    model = UNet(block=ABLATION_LADDER[rung], width=4, enc_blk_nums=(1,), dec_blk_nums=(1,))
    variables = _random_flax_params(model, seed=1)
    _assert_trees_equal(torch_to_flax(flax_to_torch(variables, model), model), variables)


def test_mismatches_are_reported_together_with_their_keys():
    sd = _numpy_state_dict(_torch_nafnet())
    del sd["middle_blks.0.conv4.bias"]
    sd["encoders.0.0.sca.1.weight"] = np.zeros((5, 4, 1, 1), np.float32)
    sd["encoders.7.0.beta"] = np.zeros((1, 4, 1, 1), np.float32)  # a table row, not in this model
    sd["head.weight"] = np.zeros(3, np.float32)                   # no table row
    with pytest.raises(StateDictMismatchError) as info:
        torch_to_flax(sd, NAFNet(**LEVELS), source="broken.pth")
    message = str(info.value)
    for needle in ["broken.pth", "4 problem", "'middle_blks.0.conv4.bias'",
                   "'encoders.0.0.sca.1.weight'",
                   "(5, 4, 1, 1)", "(4, 4, 1, 1)", "'encoders.7.0.beta'", "'head.weight'"]:
        assert needle in message, f"{needle!r} not in:\n{message}"


def test_published_name_fixes_the_architecture():
    """A width-4 state dict is not NAFNet-SIDD-width32's: every parameter is named."""
    with pytest.raises(StateDictMismatchError, match="NAFNet-SIDD-width32") as info:
        torch_to_flax(_numpy_state_dict(_torch_nafnet()), "NAFNet-SIDD-width32")
    assert "'intro.weight'" in str(info.value) and "'middle_blks.11.gamma'" in str(info.value)


def test_flax_to_torch_rejects_missing_and_unexpected_params():
    model = NAFNet(**LEVELS)
    params = _random_flax_params(model)["params"]
    del params["ending"]["bias"]
    params["extra"] = {"kernel": np.zeros((1, 1, 4, 4), np.float32)}
    with pytest.raises(StateDictMismatchError) as info:
        flax_to_torch(params, model)
    assert "'ending/bias'" in str(info.value) and "'extra/kernel'" in str(info.value)


# -------------------------------------------------------------------------------------------------
# Files


def _write_pth(path, payload):
    torch.save({k: ({kk: torch.from_numpy(vv) for kk, vv in v.items()} if isinstance(v, dict)
                    else torch.from_numpy(v)) for k, v in payload.items()}, path)


@pytest.mark.parametrize("layout", ["params", "module_prefix", "params_ema", "plain"])
def test_pth_layouts_load_the_same_state_dict(tmp_path, layout):
    sd = _numpy_state_dict(_torch_nafnet())
    payload = {"params": {"module." + k: v for k, v in sd.items()}} if layout == "module_prefix" \
        else {layout: sd} if layout in ("params", "params_ema") else sd
    path = str(tmp_path / "w.pth")
    _write_pth(path, payload)
    loaded = load_torch_checkpoint(path)
    assert sorted(loaded) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(loaded[k], sd[k], err_msg=k)


def test_params_key_wins_over_params_ema(tmp_path):
    """As the original's load_network (param_key='params'); spandrel would pick params_ema."""
    sd = _numpy_state_dict(_torch_nafnet())
    ema = {k: v + 1 for k, v in sd.items()}
    path = str(tmp_path / "w.pth")
    _write_pth(path, {"params": sd, "params_ema": ema})
    np.testing.assert_array_equal(load_torch_checkpoint(path)["intro.bias"], sd["intro.bias"])
    np.testing.assert_array_equal(load_torch_checkpoint(path, "params_ema")["intro.bias"],
                                  ema["intro.bias"])


def test_safetensors_round_trip_needs_no_torch(tmp_path, monkeypatch):
    model = NAFNet(**LEVELS)
    variables = _random_flax_params(model, seed=3)
    path = str(tmp_path / "w.safetensors")
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now fails
    save_torch_checkpoint(flax_to_torch(variables, model), path)
    _assert_trees_equal(convert.convert_checkpoint(path, model), variables)


def test_spandrel_loader_runs_a_converted_pth(tmp_path):
    """spandrel detects NAFNet in our .pth, loads it (strict), and computes what Flax does."""
    install_torchvision_stub()
    import spandrel

    model = NAFNet(**LEVELS)
    variables = _random_flax_params(model, seed=4)
    variables = jax.tree.map(lambda a: (0.2 * a).astype(a.dtype), variables)  # tame the activations
    path = str(tmp_path / "w.pth")
    save_torch_checkpoint(flax_to_torch(variables, model), path)
    descriptor = spandrel.ModelLoader().load_from_file(path)
    assert descriptor.architecture.id == "NAFNet"
    x = np.random.default_rng(5).uniform(size=(1, 9, 11, 3)).astype(np.float32)
    with torch.no_grad():
        want = descriptor.model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    with jax.default_matmul_precision("highest"):
        got = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(x)))
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), atol=1e-5, rtol=1e-5)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torch_checkpoint(str(tmp_path / "nope.pth"))


# -------------------------------------------------------------------------------------------------
# Command line


TINY_OVERRIDES = ["--set", "width=4", "--set", "enc_blk_nums=[1]", "--set", "middle_blk_num=1",
                  "--set", "dec_blk_nums=[1]"]


def _tiny_published(name="NAFNet-SIDD-width32"):
    """A published name shrunk by overrides, so the CLI is tested without a 29M-param file."""
    from nafnet_jax.models import get_model
    return get_model(name, width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,))


def test_cli_converts_to_orbax_and_back(tmp_path, capsys):
    from nafnet_jax.training.checkpointing import load_model_checkpoint

    model = _tiny_published()
    variables = _random_flax_params(model, seed=6)
    sd = flax_to_torch(variables, model)
    src, out, back = str(tmp_path / "in.pth"), str(tmp_path / "orbax"), str(tmp_path / "back.pth")
    _write_pth(src, {"params": sd})
    assert convert.main([src, out, "--model", "NAFNet-SIDD-width32", *TINY_OVERRIDES]) == 0
    params, model_config = load_model_checkpoint(out)
    assert model_config["name"] == "NAFNet-SIDD-width32" and model_config["width"] == 4
    _assert_trees_equal({"params": params}, variables)
    assert convert.main(["--to-torch", out, back]) == 0
    loaded = load_torch_checkpoint(back)
    assert sorted(loaded) == sorted(sd)
    for k in sd:
        np.testing.assert_array_equal(loaded[k], sd[k], err_msg=k)


def test_cli_ema_round_trip_flax_pth_flax(tmp_path, capsys):
    """EMA weights go out as the original's 'params_ema' (beside 'params') and come back as EMA."""
    import torch

    from nafnet_jax.training.checkpointing import load_model_checkpoint, save_model_checkpoint

    model = _tiny_published()
    raw, ema = _random_flax_params(model, seed=7), _random_flax_params(model, seed=8)
    config = {"name": "NAFNet-SIDD-width32", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1,
              "dec_blk_nums": [1]}
    flax_dir, pth, back = tmp_path / "flax", str(tmp_path / "w.pth"), str(tmp_path / "back")
    save_model_checkpoint(flax_dir, raw["params"], config, ema_params=ema["params"])
    assert convert.main(["--to-torch", str(flax_dir), pth]) == 0
    saved = torch.load(pth, map_location="cpu", weights_only=True)
    assert sorted(saved) == ["params", "params_ema"]
    for key, variables in (("params", raw), ("params_ema", ema)):
        want = flax_to_torch(variables, model)
        assert sorted(saved[key]) == sorted(want)
        for k in want:
            np.testing.assert_array_equal(saved[key][k].numpy(), want[k], err_msg=f"{key} {k}")
    assert convert.main([pth, back, "--model", "NAFNet-SIDD-width32", *TINY_OVERRIDES]) == 0
    _assert_trees_equal({"params": load_model_checkpoint(back)[0]}, raw)
    _assert_trees_equal({"params": load_model_checkpoint(back, use_ema=True)[0]}, ema)
    # --param-key picks one entry as the parameters; no EMA is stored then.
    only = str(tmp_path / "only_ema")
    assert convert.main([pth, only, "--model", "NAFNet-SIDD-width32", *TINY_OVERRIDES,
                         "--param-key", "params_ema"]) == 0
    _assert_trees_equal({"params": load_model_checkpoint(only)[0]}, ema)


def test_cli_use_ema_without_ema_names_the_checkpoint(tmp_path, capsys):
    from nafnet_jax.training.checkpointing import save_model_checkpoint

    model = _tiny_published()
    config = {"name": "NAFNet-SIDD-width32", "width": 4, "enc_blk_nums": [1], "middle_blk_num": 1,
              "dec_blk_nums": [1]}
    flax_dir = tmp_path / "flax"
    save_model_checkpoint(flax_dir, _random_flax_params(model, seed=9)["params"], config)
    capsys.readouterr()
    assert convert.main(["--to-torch", str(flax_dir), str(tmp_path / "w.safetensors"), "--use-ema"]) == 2
    err = _error_line(capsys)
    assert str(flax_dir) in err and "EMA" in err, err
    assert not (tmp_path / "w.safetensors").exists()


def test_safetensors_takes_one_state_dict(tmp_path):
    model = NAFNet(**LEVELS)
    sd = flax_to_torch(_random_flax_params(model, seed=10), model)
    with pytest.raises(ValueError, match="w.safetensors: a .safetensors file holds one state dict"):
        save_torch_checkpoint(sd, str(tmp_path / "w.safetensors"), ema_state_dict=sd)


def _error_line(capsys) -> str:
    """The CLI's stderr, asserted to be exactly one line."""
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, f"expected one error line, got:\n{err}"
    return err


def test_cli_refuses_a_non_empty_output_dir(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("not a checkpoint")
    assert convert.main([str(tmp_path / "in.pth"), str(out), "--model", "NAFNet-SIDD-width32"]) == 2
    assert "--overwrite" in _error_line(capsys)
    assert (out / "keep.txt").exists()


def test_cli_rejects_unknown_model_and_override(tmp_path, capsys):
    assert convert.main([str(tmp_path / "in.pth"), str(tmp_path / "o"), "--model", "NAFNet-Foo"]) == 2
    assert "NAFNet-Foo" in _error_line(capsys)
    assert convert.main([str(tmp_path / "in.pth"), str(tmp_path / "o"),
                         "--model", "NAFNet-SIDD-width32", "--set", "widht=4"]) == 2
    assert "widht" in _error_line(capsys)
    assert not (tmp_path / "o").exists()


def _tiny_pth(path, width=4):
    model = _tiny_published()
    if width != 4:
        from nafnet_jax.models import get_model
        model = get_model("NAFNet-SIDD-width32", width=width, enc_blk_nums=(1,), middle_blk_num=1,
                          dec_blk_nums=(1,))
    _write_pth(str(path), {"params": flax_to_torch(_random_flax_params(model, seed=2), model)})


@pytest.mark.parametrize("case", ["missing", "empty", "truncated", "not_a_checkpoint", "bare_tensor",
                                  "width_mismatch"])
def test_cli_bad_input_files_get_one_line_naming_the_file_and_exit_2(tmp_path, capsys, case):
    src = tmp_path / "in.pth"
    if case == "empty":
        src.write_bytes(b"")
    elif case == "truncated":
        _tiny_pth(src)
        src.write_bytes(src.read_bytes()[:300])
    elif case == "not_a_checkpoint":
        src.write_text("this is a text file, not weights\n")
    elif case == "bare_tensor":
        torch.save(torch.zeros(3), src)
    elif case == "width_mismatch":
        _tiny_pth(src, width=8)  # every tensor mis-shaped for width 4: dozens of problems
    code = convert.main([str(src), str(tmp_path / "out"), "--model", "NAFNet-SIDD-width32", *TINY_OVERRIDES])
    line = _error_line(capsys)
    assert code == 2 and str(src) in line, line
    want = {"missing": "no checkpoint file", "empty": "empty", "truncated": "not a readable checkpoint",
            "not_a_checkpoint": "not a readable checkpoint", "bare_tensor": "Tensor",
            "width_mismatch": "and "}[case]
    assert want in line, line
    if case == "width_mismatch":  # a count and the first few, not every key
        assert "problem(s)" in line and len(line) < 800, line
    assert not (tmp_path / "out").exists()


def test_a_block_without_a_pytorch_counterpart_is_refused_by_name():
    import flax.linen as nn

    from nafnet_jax.models import BlockSpec, register_block

    @register_block("test_convert_no_original")
    class NoOriginal(nn.Module):
        tlc_kernel: object = None
        dtype: object = None
        param_dtype: object = jnp.float32
        depthwise_impl: str = "auto"
        platform: object = None
        drop_path_rate: float = 0.0

        @nn.compact
        def __call__(self, x, deterministic=True):
            return x + nn.Dense(x.shape[-1])(x)

    model = UNet(block=BlockSpec("test_convert_no_original"), width=4, enc_blk_nums=(1,), dec_blk_nums=(1,))
    with pytest.raises(ValueError, match="test_convert_no_original.*no counterpart"):
        flax_to_torch({"params": {}}, model)
