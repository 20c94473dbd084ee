"""The training step reproduces the original recipe (PSNR loss, clip 0.01, AdamW, cosine)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from nafnet_jax.training.losses import get_loss, psnr_loss
from nafnet_jax.models import NAFNet
from nafnet_jax.training.optim import clip_by_global_norm_torch, cosine_schedule, create_optimizer
from nafnet_jax.training.state import init_train_state
from nafnet_jax.training.step import make_grad_fn, make_train_step

torch = pytest.importorskip("torch")

ARCH = dict(width=4, enc_blk_nums=(1, 1), middle_blk_num=1, dec_blk_nums=(1, 1))
OPT = ml_collections.ConfigDict(dict(lr=1e-3, eta_min=1e-7, b1=0.9, b2=0.9, eps=1e-8,
                                     weight_decay=1e-3, grad_clip=0.01))


def _torch_nafnet():
    from nafnet_jax.torch_reference import install_torchvision_stub
    install_torchvision_stub()
    from spandrel.architectures.NAFNet.__arch.NAFNet_arch import NAFNet as TorchNAFNet
    torch.manual_seed(0)
    net = TorchNAFNet(img_channel=3, width=ARCH["width"], middle_blk_num=ARCH["middle_blk_num"],
                      enc_blk_nums=list(ARCH["enc_blk_nums"]), dec_blk_nums=list(ARCH["dec_blk_nums"]))
    net = net.double()
    with torch.no_grad():  # make skip-init scales and LayerNorms non-trivial
        for name, p in net.named_parameters():
            if name.endswith(("beta", "gamma")):
                p.copy_(torch.randn_like(p) * 0.5)
            elif "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    return net


def _torch_two_steps(net, batches, total_steps):
    """The original's loop: scheduler.step() before every iteration but the first."""
    opt = torch.optim.AdamW(net.parameters(), lr=OPT.lr, betas=(OPT.b1, OPT.b2), eps=OPT.eps,
                            weight_decay=OPT.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps, eta_min=OPT.eta_min)
    for i, (lq, gt) in enumerate(batches):
        if i > 0:
            sched.step()
        opt.zero_grad()
        pred = net(torch.from_numpy(lq).permute(0, 3, 1, 2))
        target = torch.from_numpy(gt).permute(0, 3, 1, 2)
        mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
        loss = (10 / math.log(10)) * torch.log(mse + 1e-8).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 0.01)
        opt.step()
    return net.state_dict()


def test_two_steps_match_the_original_recipe_in_float64():
    from nafnet_jax.tools.convert import flax_to_torch, torch_to_flax

    rng = np.random.default_rng(0)
    batches = [(rng.random((2, 20, 20, 3)), rng.random((2, 20, 20, 3))) for _ in range(2)]
    net = _torch_nafnet()
    start = {k: v.detach().numpy().copy() for k, v in net.state_dict().items()}
    total_steps = 4
    expected = _torch_two_steps(net, batches, total_steps)

    with jax.enable_x64(True):
        model = NAFNet(**ARCH, depthwise_impl="xla")
        tx = create_optimizer(OPT, total_steps)
        params = jax.tree.map(jnp.asarray, torch_to_flax(start, model)["params"])
        state = init_train_state(model, tx, jax.random.key(0), (1, 16, 16, 3), use_ema=False)
        state = state.replace(params=params, opt_state=tx.init(params))
        step = jax.jit(make_train_step(model, tx, get_loss("psnr")))  # what train.loss='psnr' builds
        for lq, gt in batches:
            state, metrics = step(state, {"lq": jnp.asarray(lq), "gt": jnp.asarray(gt)})
        got = flax_to_torch({"params": jax.device_get(state.params)}, model)

    worst = max(float(np.max(np.abs(np.asarray(got[k]) - expected[k].numpy()))) for k in expected)
    moved = max(float(np.max(np.abs(expected[k].numpy() - start[k]))) for k in expected)
    assert moved > 1e-4, "the reference did not move the parameters; the test would prove nothing"
    assert worst <= 1e-6, f"params differ from the PyTorch recipe by {worst:.3g} after two steps"


def test_schedule_is_indexed_as_the_original():
    # NAFNET.md 2.2: step 2 (1-based) of T_max=4, lr0 1e-3, eta_min 1e-7 uses 8.535680e-4.
    sched = cosine_schedule(1e-3, 4, 1e-7)
    assert float(sched(0)) == pytest.approx(1e-3, rel=1e-6)
    assert float(sched(1)) == pytest.approx(8.535680e-4, rel=1e-6)
    assert float(sched(4)) == pytest.approx(1e-7, rel=1e-6)


def test_clip_uses_torch_formula():
    grads = {"a": jnp.array([3.0, 4.0])}  # norm 5
    clipped, _ = clip_by_global_norm_torch(0.01).update(grads, None)
    np.testing.assert_allclose(clipped["a"], np.array([3.0, 4.0]) * 0.01 / (5.0 + 1e-6), rtol=1e-6)
    small = {"a": jnp.array([1e-4, 0.0])}
    unclipped, _ = clip_by_global_norm_torch(0.01).update(small, None)
    np.testing.assert_array_equal(unclipped["a"], small["a"])


def test_psnr_loss_is_minus_per_sample_psnr_averaged():
    pred = jnp.zeros((2, 4, 4, 3))
    gt = jnp.concatenate([jnp.full((1, 4, 4, 3), 0.1), jnp.full((1, 4, 4, 3), 0.01)])
    expected = -np.mean([10 * np.log10(1 / (0.01 + 1e-8)), 10 * np.log10(1 / (1e-4 + 1e-8))])
    assert float(psnr_loss(pred, gt)) == pytest.approx(expected, rel=1e-5)


def _tiny_setup(loss="psnr", accum=1, nonfinite="stop"):
    model = NAFNet(width=4, enc_blk_nums=(1,), dec_blk_nums=(1,))
    tx = create_optimizer(OPT, 10)
    state = init_train_state(model, tx, jax.random.key(1), (1, 8, 8, 3), use_ema=False)
    return model, tx, state, jax.jit(make_train_step(model, tx, get_loss(loss), accum, nonfinite))


def _batch(seed, n=4, size=8):
    r = np.random.default_rng(seed)
    return {"lq": jnp.asarray(r.random((n, size, size, 3)), jnp.float32),
            "gt": jnp.asarray(r.random((n, size, size, 3)), jnp.float32)}


@pytest.mark.slow  # ~30 s; the gradients themselves are checked by the next test, the trainer's
# accumulated steps by test_trainer's fsdp + grad_accum test
def test_gradient_accumulation_equals_the_full_batch():
    _, _, state, full = _tiny_setup(accum=1)
    _, _, _, accum = _tiny_setup(accum=2)
    batch = _batch(0)
    s1, m1 = full(state, batch)
    s2, m2 = accum(state, batch)
    assert float(m1["loss"]) == pytest.approx(float(m2["loss"]), abs=1e-5)
    # grad_norm is taken before the clip, which would normalise a wrong scale away.
    assert float(m2["grad_norm"]) == pytest.approx(float(m1["grad_norm"]), rel=1e-4), "accumulated grad_norm"
    diff = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), s1.params, s2.params)
    assert max(jax.tree.leaves(diff)) < 1e-6, diff


def _max_rel_diff(a, b) -> float:
    """max over leaves of max|a - b| / max|b|."""
    def rel(u, v):  # an all-zero reference leaf needs an all-zero result
        return float(jnp.max(jnp.abs(u - v)) / jnp.maximum(jnp.max(jnp.abs(v)), 1e-30))

    return max(jax.tree.leaves(jax.tree.map(rel, a, b)))


def test_accumulated_gradients_equal_the_full_batch_gradients():
    """The gradients themselves, before any clip or Adam: a sum over micro-batches in place
    of their mean would be `accum` times too large and fail by a factor of `accum`."""
    model, _, state, _ = _tiny_setup()
    # Off skip-init (beta = gamma = 0 zeroes most blocks' gradients), so every leaf is compared.
    rng = np.random.default_rng(5)
    params = jax.tree.map(lambda p: p + jnp.asarray(0.3 * rng.normal(size=p.shape), p.dtype), state.params)
    batch = _batch(0, n=4)
    key = jax.random.key(0)
    loss_fn = get_loss({"psnr": 1.0, "fft_l1": {"weight": 0.05}})
    (loss1, stats1), grads1 = jax.jit(make_grad_fn(model, loss_fn, 1))(params, batch, key)
    assert all(bool(jnp.any(g != 0)) for g in jax.tree.leaves(grads1)), "a gradient leaf is all zeros"
    for accum in (2, 4):  # 4: micro-batches of one image
        (loss_k, stats_k), grads_k = jax.jit(make_grad_fn(model, loss_fn, accum))(params, batch, key)
        assert float(loss_k) == pytest.approx(float(loss1), rel=1e-5), f"accum={accum}: loss"
        for name in ("psnr", "loss/psnr", "loss/fft_l1"):  # every logged term is averaged as the loss
            assert float(stats_k[name]) == pytest.approx(float(stats1[name]), rel=1e-5), f"accum={accum}: {name}"
        err = _max_rel_diff(grads_k, grads1)
        assert err < 1e-4, f"{accum} micro-batches: gradients differ from the full batch's by {err:.3g}"


def test_grad_accum_steps_must_be_a_positive_int():
    with pytest.raises(ValueError, match="grad_accum_steps=0"):
        make_grad_fn(NAFNet(width=4), psnr_loss, 0)


# ('psnr' alone is what every other test here trains with.)
@pytest.mark.parametrize("loss", ["l1", "mse", "charbonnier",
                                  pytest.param({"psnr": 1.0, "fft_l1": {"weight": 0.05}}, id="psnr+fft_l1")])
def test_every_loss_trains_and_logs_its_terms(loss):
    _, _, state, step = _tiny_setup(loss=loss)
    new_state, metrics = step(state, _batch(0))
    assert np.isfinite(float(metrics["loss"]))
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
    assert any(jax.tree.leaves(changed))
    terms = {k: float(v) for k, v in metrics.items() if k.startswith("loss/")}
    names = list(loss) if isinstance(loss, dict) else [loss]
    assert sorted(terms) == sorted(f"loss/{n}" for n in names), f"logged terms {sorted(terms)}"
    if isinstance(loss, dict):  # the total is the weighted sum of the logged, unweighted terms
        assert terms["loss/psnr"] == pytest.approx(-float(metrics["psnr"]), rel=1e-5)
        assert float(metrics["loss"]) == pytest.approx(terms["loss/psnr"] + 0.05 * terms["loss/fft_l1"], rel=1e-6)


def test_nonfinite_step_is_not_applied_and_stop_freezes():
    _, _, state, step = _tiny_setup(nonfinite="stop")
    bad = _batch(0)
    bad["lq"] = bad["lq"].at[0, 0, 0, 0].set(jnp.nan)
    s1, m1 = step(state, bad)
    assert int(s1.first_nonfinite_step) == 1 and int(s1.nonfinite_count) == 1
    assert float(m1["applied"]) == 0.0
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s1.params, state.params)))
    s2, m2 = step(s1, _batch(1))  # a good batch after a bad one: still frozen under 'stop'
    assert float(m2["applied"]) == 0.0
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), s2.params, state.params)))


def test_nonfinite_skip_policy_goes_on():
    _, _, state, step = _tiny_setup(nonfinite="skip")
    bad = _batch(0)
    bad["gt"] = bad["gt"].at[0, 0, 0, 0].set(jnp.inf)
    s1, m1 = step(state, bad)
    s2, m2 = step(s1, _batch(1))
    assert float(m1["applied"]) == 0.0 and float(m2["applied"]) == 1.0
    assert int(s2.nonfinite_count) == 1 and int(s2.first_nonfinite_step) == 1
    assert int(s2.step) == 2


def test_unknown_loss_is_named():
    with pytest.raises(ValueError, match="train.loss='l3'"):
        get_loss("l3")


def test_optax_adamw_matches_torch_adamw_decoupling():
    # One AdamW step from a known gradient, computed by hand (torch's formula).
    p = jnp.array([1.0, -2.0])
    g = jnp.array([0.5, 0.25])
    tx = optax.adamw(1e-2, b1=0.9, b2=0.9, eps=1e-8, weight_decay=0.1)
    upd, _ = tx.update(g, tx.init(p), p)
    new = p + upd
    m, v = 0.1 * g, 0.1 * g * g
    expected = p * (1 - 1e-2 * 0.1) - 1e-2 * (m / 0.1) / (jnp.sqrt(v / 0.1) + 1e-8)
    np.testing.assert_allclose(new, expected, rtol=1e-6)


def test_step_traces_once_and_needs_no_implicit_rank_promotion():
    import chex
    from nafnet_jax.training import partitioning
    from nafnet_jax.training.step import jit_train_step

    model, tx, state, _ = _tiny_setup()
    mesh = partitioning.create_mesh(1)
    shardings = partitioning.state_shardings(state, mesh)
    state = jax.device_put(state, shardings)  # as the trainer's state is born: on the mesh
    batch_sharding = partitioning.batch_sharding(mesh)
    with jax.numpy_rank_promotion("raise"):
        step = jit_train_step(chex.assert_max_traces(make_train_step(model, tx, psnr_loss), n=1),
                              shardings, batch_sharding)
        for i in range(3):  # a second trace (recompilation) would raise
            batch = partitioning.host_to_global(jax.device_get(_batch(i)), batch_sharding)
            state, metrics = step(state, batch)
    assert int(state.step) == 3 and np.isfinite(float(metrics["loss"]))


def _schedule_setup(total_steps, nonfinite="skip"):
    from nafnet_jax.training.optim import create_schedule
    model = NAFNet(width=4, enc_blk_nums=(1,), dec_blk_nums=(1,))
    tx = create_optimizer(OPT, total_steps)
    schedule = create_schedule(OPT, total_steps)
    state = init_train_state(model, tx, jax.random.key(1), (1, 8, 8, 3), use_ema=False)
    step = jax.jit(make_train_step(model, tx, get_loss("psnr"), nonfinite=nonfinite, schedule=schedule))
    return state, step, schedule


def _adam_state(opt_state):
    return next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState))


def test_a_skipped_step_still_consumes_its_schedule_step_and_logs_the_rate_of_each_step():
    from nafnet_jax.training.optim import schedule_count
    total = 4
    state, step, schedule = _schedule_setup(total)
    bad = _batch(1)
    bad["lq"] = bad["lq"].at[0, 0, 0, 0].set(jnp.nan)
    batches = [_batch(0), bad, _batch(2), _batch(3)]
    for i, batch in enumerate(batches):
        before = state
        state, metrics = step(state, batch)
        count = int(schedule_count(state.opt_state))
        assert int(state.step) == count == i + 1, f"after step {i + 1}: state.step {int(state.step)}, count {count}"
        assert float(metrics["lr"]) == pytest.approx(float(schedule(i)), rel=1e-6), f"lr logged at step {i + 1}"
        if i == 1:  # the skipped step: params, moments and Adam's bias-correction count are kept
            assert float(metrics["applied"]) == 0.0
            same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)),
                                (before.params, _adam_state(before.opt_state)),
                                (state.params, _adam_state(state.opt_state)))
            assert all(jax.tree.leaves(same)), "a skipped step changed params or Adam's moments/count"
    assert int(_adam_state(state.opt_state).count) == 3, "Adam's count should count applied updates only"
    # The cosine has run its course although a step was skipped: the next rate would be eta_min.
    assert float(schedule(schedule_count(state.opt_state))) == pytest.approx(OPT.eta_min, rel=1e-5)
