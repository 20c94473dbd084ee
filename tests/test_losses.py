"""`train.loss`: the losses against references computed another way, their weighted combination,
and config errors that name the key."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nafnet_jax.training.losses import (LossTerm, WeightedLoss, fft_l1_loss, get_loss, parse_loss_spec,
                                        psnr_loss)


def _pair(seed=0, shape=(2, 6, 8, 3)):
    r = np.random.default_rng(seed)
    return r.random(shape).astype(np.float32), r.random(shape).astype(np.float32)


@pytest.mark.parametrize("norm", ["backward", "ortho", "forward"])
def test_fft_l1_is_the_l1_of_real_and_imaginary_parts_of_numpys_rfft2(norm):
    pred, gt = _pair()
    d = np.fft.rfft2(pred.astype(np.float64), axes=(1, 2), norm=norm) - \
        np.fft.rfft2(gt.astype(np.float64), axes=(1, 2), norm=norm)
    expected = np.mean(np.stack([np.abs(d.real), np.abs(d.imag)]))
    got = float(fft_l1_loss(jnp.asarray(pred), jnp.asarray(gt), norm=norm))
    assert got == pytest.approx(expected, rel=1e-5), f"norm={norm}"


def test_fft_l1_of_a_constant_offset_is_its_dc_term_by_hand():
    # rfft2 of a constant c over H x W: one coefficient H*W*c (real), all others 0; there are
    # H * (W // 2 + 1) coefficients, each with a real and an imaginary part.
    h, w, c = 4, 6, 0.25
    pred = jnp.full((1, h, w, 1), 0.5 + c)
    gt = jnp.full((1, h, w, 1), 0.5)
    expected = h * w * c / (2 * h * (w // 2 + 1))
    assert float(fft_l1_loss(pred, gt)) == pytest.approx(expected, rel=1e-6)


def test_fft_l1_computes_in_float32_from_bfloat16_inputs():
    pred, gt = _pair()
    value = fft_l1_loss(jnp.asarray(pred, jnp.bfloat16), jnp.asarray(gt, jnp.bfloat16))
    assert value.dtype == jnp.float32


def test_the_psnr_name_is_the_original_loss_bit_for_bit_with_its_gradient():
    pred, gt = map(jnp.asarray, _pair())
    loss = get_loss("psnr")
    assert loss.terms == (LossTerm("psnr", 1.0),)
    np.testing.assert_array_equal(np.asarray(loss(pred, gt)), np.asarray(psnr_loss(pred, gt)))
    np.testing.assert_array_equal(np.asarray(jax.grad(loss)(pred, gt)), np.asarray(jax.grad(psnr_loss)(pred, gt)))


def test_a_weighted_mapping_sums_weighted_terms_and_reports_them_unweighted():
    pred, gt = map(jnp.asarray, _pair())
    loss = get_loss({"psnr": 1.0, "fft_l1": {"weight": 0.05}, "charbonnier": {"weight": 2, "eps": 1e-2}})
    total, terms = loss.components(pred, gt)
    assert set(terms) == {"loss/psnr", "loss/fft_l1", "loss/charbonnier"}
    charb = float(jnp.mean(jnp.sqrt(jnp.square(pred - gt) + 1e-4)))
    assert float(terms["loss/charbonnier"]) == pytest.approx(charb, rel=1e-6), "eps was not passed"
    assert float(terms["loss/fft_l1"]) == pytest.approx(float(fft_l1_loss(pred, gt)), rel=1e-6)
    expected = float(terms["loss/psnr"]) + 0.05 * float(terms["loss/fft_l1"]) + 2 * charb
    assert float(total) == pytest.approx(expected, rel=1e-6)


def test_the_json_string_form_equals_the_mapping():
    assert parse_loss_spec('{"psnr": 1, "fft_l1": {"weight": 0.05}}') == \
        parse_loss_spec({"psnr": 1.0, "fft_l1": {"weight": 0.05}})


@pytest.mark.parametrize("spec, names", [
    ("l3", "train.loss='l3'"),
    ({"l3": 1.0}, "train.loss.l3"),
    ({"fft_l1": {"weight": 0.1, "nrm": "ortho"}}, "train.loss.fft_l1.nrm"),
    ({"fft_l1": {"norm": "sideways"}}, "train.loss.fft_l1"),
    ({"charbonnier": {"eps": -1.0}}, "train.loss.charbonnier"),
    ({"psnr": {"weight": "one"}}, "train.loss.psnr.weight"),
    ({"psnr": -1.0}, "train.loss.psnr"),
    ({"psnr": 0.0}, "weight > 0"),
    ({}, "train.loss"),
])
def test_a_bad_loss_spec_is_an_error_naming_its_key(spec, names):
    with pytest.raises(ValueError, match=names.replace(".", r"\.").replace("(", r"\(")):
        parse_loss_spec(spec)


def test_a_weighted_loss_from_the_command_line_reaches_the_validated_config(tmp_path):
    from absl import flags
    from ml_collections import config_flags

    from nafnet_jax.config import validate_config
    from trainer_helpers import REPO

    argv = ["prog", f"--config={REPO / 'configs' / 'demo.py'}",
            '--config.train.loss={"psnr": 1, "fft_l1": {"weight": 0.05}}']
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=flag_values, lock_config=True,  # as train.py
                                    sys_argv=argv)
    flag_values(argv)
    config = flag_values.config
    validate_config(config)
    assert WeightedLoss(parse_loss_spec(config.train.loss)) == get_loss({"psnr": 1.0, "fft_l1": 0.05})

    config.train.loss = {"fft_l1": {"weight": 1.0, "norm": "bogus"}}  # a config file may set a mapping
    with pytest.raises(ValueError, match=r"train\.loss\.fft_l1"):
        validate_config(config)
