"""The config schema every `configs/*.py` starts from, and its validation.

Every number of a recipe lives in the config files; this module only fixes the
keys (so a typo on the command line is an error naming the key) and checks the
values before any work starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from nafnet_jax.training.losses import parse_loss_spec
from nafnet_jax.models.blocks import DEFAULT_BLOCK, BlockConfig, block_spec
from nafnet_jax.models.unet import drop_path_rates
from nafnet_jax.models.registry import architecture, model_class
from nafnet_jax.models.unet import UNet
from nafnet_jax.training.step import NONFINITE_POLICIES


def model_config(width: int, enc_blk_nums: Sequence[int], middle_blk_num: int,
                 dec_blk_nums: Sequence[int], activation: str = "simple_gate",
                 attention: Optional[str] = "sca", norm: bool = True, dw_expand: int = 2,
                 ffn_expand: int = 2, tlc_train_size: Optional[Sequence[int]] = None,
                 ) -> ml_collections.ConfigDict:
    """`config.model`: the `UNet` attributes, spelled out (no hidden registry defaults).

    The U-Net's shape has no default: a named architecture comes from the registry
    (`model_config_for`), a custom one spells its width and block counts here.
    """
    return ml_collections.ConfigDict({
        "arch": "unet",              # the model class: 'unet' (NAFNet, Baseline, ladder) or 'nafssr'
        "width": width,
        "enc_blk_nums": tuple(enc_blk_nums),
        "middle_blk_num": middle_blk_num,
        "dec_blk_nums": tuple(dec_blk_nums),
        "img_channel": 3,
        # A registered block's name and options (models/blocks.py); the restoration block's options
        # are BlockConfig's fields. Another block: `config.model.block = {"name": ..., **its options}`.
        "block": {"name": DEFAULT_BLOCK, "activation": activation,
                  "attention": attention if attention is not None else config_dict.placeholder(str),
                  "norm": norm, "dw_expand": dw_expand, "ffn_expand": ffn_expand},
        # (H, W) of the training crops: enables TLC (NAFNetLocal) at test time.
        "tlc_train_size": (tuple(tlc_train_size) if tlc_train_size is not None
                           else config_dict.placeholder(tuple)),
        "dtype": "float32",          # compute dtype; 'bfloat16' for mixed precision
        "param_dtype": "float32",
        "depthwise_impl": "auto",    # 'auto' picks the fastest exact formulation per backend
        "remat": False,
        "drop_path_rate": 0.0,          # stochastic depth in training (0: none, as the original NAFNet)
        "drop_path_schedule": "linear",  # per-block rate: 'linear' 0 -> rate over the blocks, or 'constant'
    })


def nafssr_model_config(up_scale: int, width: int, num_blks: int, drop_path_rate: float = 0.0,
                        tlc_train_size: Optional[Sequence[int]] = None, fusion_from: int = -1,
                        fusion_to: int = 1000) -> ml_collections.ConfigDict:
    """`config.model` of a NAFSSR (stereo super-resolution, models/nafssr.py), spelled out."""
    return ml_collections.ConfigDict({
        "arch": "nafssr",
        "up_scale": up_scale,
        "width": width,
        "num_blks": num_blks,
        # (h, w) of the LR training crops: TLC at test time, a (1.5h, 1.5w) box in every block.
        "tlc_train_size": (tuple(tlc_train_size) if tlc_train_size is not None
                           else config_dict.placeholder(tuple)),
        "fusion_from": fusion_from,  # blocks fusion_from..fusion_to (inclusive) have a SCAM: all by default
        "fusion_to": fusion_to,
        "dtype": "float32",
        "param_dtype": "float32",
        "depthwise_impl": "auto",
        "remat": False,
        "drop_path_rate": drop_path_rate,  # NAFSSR's DropPath: the same rate for every block, one draw a batch
    })


def model_config_for(name: str, **overrides: Any) -> ml_collections.ConfigDict:
    """`config.model` of a named architecture (`nafnet_jax.models.registry.ARCHITECTURES`), spelled out.

    The recipe configs build their model from the registry's table this way, so an
    architecture is written down once, e.g. `model_config_for("NAFNet-GoPro-width32")`.

    Args:
      name: e.g. 'NAFNet-SIDD-width64'.
      **overrides: `config.model` keys to change; `block` may be a `BlockConfig` (an
        ablation rung on a published body), a `BlockSpec`, or a `model.block` mapping.
    Raises:
      KeyError for an unknown name, ValueError naming an unknown override key or block option.
    """
    arch = architecture(name)
    if model_class(name) is not UNet:  # NAFSSR
        config = nafssr_model_config(**arch)
    else:
        block = block_spec(overrides.pop("block", arch.pop("block")))  # checks name and options
        if isinstance(block, BlockConfig):  # the restoration block: its fields spelled out flat
            config = model_config(**arch, **dataclasses.asdict(block))
        else:
            config = model_config(**arch)
            config.block = {"name": block.name, **dict(block.options)}
    for key, value in overrides.items():
        if key not in config:
            raise ValueError(f"unknown model config key {key!r} for model {name!r}; known: {sorted(config)}")
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def base_config() -> ml_collections.ConfigDict:
    """All keys with the original's common settings (NAFNET.md 2.2)."""
    from nafnet_jax.data import default_data_config
    from nafnet_jax.evaluation.evaluate import default_eval_config

    config = ml_collections.ConfigDict()
    config.seed = 42
    config.model = model_config_for("NAFNet-GoPro-width32", tlc_train_size=None)  # every recipe sets its own
    config.data = default_data_config()
    config.eval = default_eval_config()
    config.optimizer = ml_collections.ConfigDict({
        "lr": 1e-3,
        "eta_min": 1e-7,        # TrueCosineAnnealingLR eta_min
        "b1": 0.9,
        "b2": 0.9,              # the original's betas (0.9, 0.9), not Adam's default 0.999
        "eps": 1e-8,
        "weight_decay": 0.0,
        "grad_clip": 0.01,      # clip_grad_norm_(0.01) is on by default in the original
    })
    config.train = ml_collections.ConfigDict({
        "total_steps": 200_000,
        "batch_size": 32,           # global batch (all devices, all micro-batches)
        "grad_accum_steps": 1,      # micro-batches per update, to reach the global batch on fewer devices
        # A loss name, or {name: weight | {"weight": w, **kwargs}} (training/losses.py), e.g.
        # {"psnr": 1.0, "fft_l1": {"weight": 0.05}}; typed `object` so a config file or the command
        # line (a JSON/Python mapping) may replace the name by a mapping.
        "loss": config_dict.FieldReference("psnr", field_type=object),
        "log_every": 100,
        "eval_every": 20_000,
        "eval_at_steps": (1000,),   # the original also validates at iteration 1000
        "num_val_images": 3,        # lq | output | gt pictures written to TensorBoard
        "checkpoint_every": 5000,
        "keep_checkpoints": 3,      # the last N, plus the best by train.best_metric
        "best_metric": "val/psnr",  # ranks checkpoints: val/psnr | val/ssim | val/psnr_ema | val/ssim_ema
        "async_checkpoints": True,
        "nonfinite": "stop",        # 'stop' or 'skip' a step whose loss/gradient is not finite
        "ema_decay": 0.0,           # the original keeps no EMA; > 0 keeps one
        "progress_bar": True,       # tqdm on a terminal, log lines otherwise
        "stop_sync_every": 50,      # several processes: compare stop-signal flags every N steps (and at
                                    # log/checkpoint/eval steps), never a host collective every step
        "compilation_cache_dir": "",    # persistent compile cache: '' = <workdir>/compile_cache; 'none': off
        "compilation_cache_min_compile_secs": 1.0,  # only compilations slower than this are cached
    })
    config.mesh = ml_collections.ConfigDict({
        "num_devices": 0,   # 0: all visible devices
        "fsdp": 1,          # >1 shards params/optimiser state over this many devices
        "min_fsdp_size": 2 ** 14,   # arrays with fewer elements stay replicated under fsdp
        "dcn_data": 1,      # >1: the data axis spans this many TPU slices (processes on GPU)
    })
    return config


def _check(cond: bool, key: str, value: Any, expected: str) -> None:
    if not cond:
        raise ValueError(f"invalid config value {key}={value!r}: expected {expected}")


MODEL_ARCHS = ("unet", "nafssr")


def _validate_nafssr(config: ml_collections.ConfigDict) -> None:
    m = config.model
    for key in ("up_scale", "num_blks"):
        _check(isinstance(m[key], int) and m[key] >= 1, f"model.{key}", m[key], "a positive int")
    _check(isinstance(m.drop_path_rate, (int, float)) and 0.0 <= m.drop_path_rate < 1.0, "model.drop_path_rate",
           m.drop_path_rate, "in [0, 1)")
    scale = config.data.get("scale", 1)
    _check(scale == m.up_scale, "data.scale", scale, f"model.up_scale={m.up_scale} (the data's LR->HR factor)")
    from nafnet_jax.evaluation.stereo import check_stereo_eval_config  # late: the evaluation stack
    check_stereo_eval_config(config.eval)  # whole-pair inference, the stereo metrics


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises ValueError naming the first invalid key; called before any work."""
    for section in ("model", "data", "eval", "optimizer", "train", "mesh"):
        if section not in config:
            raise ValueError(f"config has no '{section}' section")
    m, o, t = config.model, config.optimizer, config.train
    arch = m.get("arch", "unet")  # configs written before NAFSSR have no arch: the U-Net
    _check(arch in MODEL_ARCHS, "model.arch", arch, f"one of {MODEL_ARCHS}")
    _check(isinstance(m.width, int) and m.width > 0, "model.width", m.width, "a positive int")
    if arch == "nafssr":
        _validate_nafssr(config)
    else:
        _check(len(m.enc_blk_nums) == len(m.dec_blk_nums), "model.dec_blk_nums", m.dec_blk_nums,
               f"as many levels as model.enc_blk_nums {m.enc_blk_nums}")
        try:  # a registered block name and that block's options (models/blocks.py)
            block_spec(m.block)
        except (ValueError, TypeError) as e:
            raise ValueError(f"invalid config value model.block: {e}") from e
        try:
            drop_path_rates(1, m.get("drop_path_rate", 0.0), m.get("drop_path_schedule", "linear"))
        except ValueError as e:
            raise ValueError(f"invalid config value model.{e}") from e
        _check(config.data.get("scale", 1) == 1, "data.scale", config.data.get("scale", 1),
               "1 for a restoration U-Net (a stereo SR dataset needs model.arch='nafssr')")
    _check(m.dtype in ("float32", "bfloat16", "float16"), "model.dtype", m.dtype,
           "'float32', 'bfloat16' or 'float16'")
    _check(o.lr > 0, "optimizer.lr", o.lr, "> 0")
    _check(0 <= o.eta_min < o.lr, "optimizer.eta_min", o.eta_min, "in [0, optimizer.lr)")
    _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, "optimizer.b1/b2", (o.b1, o.b2), "in [0, 1)")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, ">= 0")
    _check(o.grad_clip is None or o.grad_clip >= 0, "optimizer.grad_clip", o.grad_clip, ">= 0 or None")
    _check(isinstance(t.total_steps, int) and t.total_steps > 0, "train.total_steps", t.total_steps,
           "a positive int")
    _check(isinstance(t.batch_size, int) and t.batch_size > 0, "train.batch_size", t.batch_size,
           "a positive int")
    _check(isinstance(t.grad_accum_steps, int) and t.grad_accum_steps >= 1
           and t.batch_size % t.grad_accum_steps == 0, "train.grad_accum_steps", t.grad_accum_steps,
           f"a positive int dividing train.batch_size={t.batch_size}")
    parse_loss_spec(t.loss)  # names the key: train.loss[.<name>[.<argument>]]
    _check(t.nonfinite in NONFINITE_POLICIES, "train.nonfinite", t.nonfinite, f"one of {NONFINITE_POLICIES}")
    for key in ("log_every", "checkpoint_every"):
        _check(isinstance(t[key], int) and t[key] > 0, f"train.{key}", t[key], "a positive int")
    _check(isinstance(t.eval_every, int) and t.eval_every >= 0, "train.eval_every", t.eval_every,
           "an int >= 0 (0: never)")
    _check(0.0 <= t.ema_decay < 1.0, "train.ema_decay", t.ema_decay, "in [0, 1)")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", t.keep_checkpoints, ">= 1")
    from nafnet_jax.evaluation.validation import check_best_metric  # late: it imports the evaluation stack
    check_best_metric(t)
    _check(isinstance(t.stop_sync_every, int) and t.stop_sync_every > 0, "train.stop_sync_every",
           t.stop_sync_every, "a positive int")
    _check(isinstance(t.compilation_cache_dir, str), "train.compilation_cache_dir", t.compilation_cache_dir,
           "a directory, '' (<workdir>/compile_cache) or 'none'")
    _check(t.compilation_cache_min_compile_secs >= 0, "train.compilation_cache_min_compile_secs",
           t.compilation_cache_min_compile_secs, ">= 0")
    _check(config.mesh.fsdp >= 1, "mesh.fsdp", config.mesh.fsdp, ">= 1")
    _check(isinstance(config.mesh.min_fsdp_size, int) and config.mesh.min_fsdp_size >= 1,
           "mesh.min_fsdp_size", config.mesh.min_fsdp_size, "a positive int")
    _check(isinstance(config.mesh.dcn_data, int) and config.mesh.dcn_data >= 1, "mesh.dcn_data",
           config.mesh.dcn_data, "a positive int (slices the data axis spans)")
    _check(config.data.crop_size > 0, "data.crop_size", config.data.crop_size, "> 0")

