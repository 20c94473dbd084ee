"""Tiny on-disk data and configs shared by the trainer tests (and their subprocesses)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
from typing import Sequence

import numpy as np
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def write_pairs(root: pathlib.Path, n_train: int = 6, n_eval: int = 2, size: int = 40, seed: int = 0) -> dict:
    """Smooth random gt images and noisy lq twins as PNG folders (the paired_folder layout)."""
    rng = np.random.default_rng(seed)
    dirs = {k: root / k for k in ("train_lq", "train_gt", "eval_lq", "eval_gt")}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for split, n in (("train", n_train), ("eval", n_eval)):
        for i in range(n):
            phase = rng.random(3) * 6.28
            gt = 0.5 + 0.4 * np.stack([np.sin(4 * xx + 3 * yy * (c + 1) + phase[c]) for c in range(3)], -1)
            lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1)
            Image.fromarray((gt * 255).round().astype(np.uint8)).save(dirs[f"{split}_gt"] / f"img{i:02d}.png")
            Image.fromarray((lq * 255).round().astype(np.uint8)).save(dirs[f"{split}_lq"] / f"img{i:02d}.png")
    return {k: str(v) for k, v in dirs.items()}


def tiny_overrides(dirs: dict, total_steps: int = 6, extra: Sequence[str] = ()) -> list:
    """train.py flags for a tiny NAFNet on `write_pairs` data."""
    return [
        "--config.model.width=4", "--config.model.enc_blk_nums=(1,)", "--config.model.middle_blk_num=1",
        "--config.model.dec_blk_nums=(1,)",
        "--config.data.dataset=paired_folder",
        f"--config.data.lq_dir={dirs['train_lq']}", f"--config.data.gt_dir={dirs['train_gt']}",
        f"--config.data.eval_lq_dir={dirs['eval_lq']}", f"--config.data.eval_gt_dir={dirs['eval_gt']}",
        "--config.data.crop_size=16", "--config.data.crops_per_image=1",
        f"--config.train.total_steps={total_steps}", "--config.train.batch_size=8",
        "--config.train.log_every=1", "--config.train.eval_every=0", "--config.train.checkpoint_every=3",
        "--config.train.async_checkpoints=False", "--config.train.progress_bar=False",
        *extra,
    ]


def train_env(devices: int = 1) -> dict:
    """The environment of a train.py subprocess with `devices` simulated CPU devices."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def train_command(workdir, overrides, extra_args: Sequence[str] = (), config_file="demo.py") -> list:
    return [sys.executable, str(REPO / "train.py"), "--config", str(REPO / "configs" / config_file),
            f"--workdir={workdir}", *extra_args, *overrides]


def run_train(workdir, overrides, devices: int = 1, env_extra=None, check=True, timeout=600,
              extra_args: Sequence[str] = (), config_file: str = "demo.py") -> subprocess.CompletedProcess:
    """Runs train.py in a fresh process (so the simulated device count can be chosen)."""
    env = train_env(devices)
    env.update(env_extra or {})
    cmd = train_command(workdir, overrides, extra_args, config_file)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def final_params(workdir) -> dict:
    """The params of the latest checkpoint in a workdir, as a flat dict of numpy arrays."""
    from nafnet_jax.training import checkpointing
    from nafnet_jax.tools.convert import flatten_params

    manager = checkpointing.create_manager(pathlib.Path(workdir) / "checkpoints", read_only=True)
    step = manager.latest_step()
    params, _ = checkpointing.load_model_checkpoint(pathlib.Path(workdir) / "checkpoints" / str(step))
    return {k: np.asarray(v) for k, v in flatten_params(params).items()}


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def config_from_overrides(overrides: Sequence[str], config_file=REPO / "configs" / "demo.py"):
    """A config file's config (configs/demo.py's by default) with `--config.key=value` overrides applied
    (for in-process runs)."""
    import ast
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo_config", config_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for override in overrides:
        key, _, text = override[len("--config."):].partition("=")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        *parents, leaf = key.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    return config


class RecordingWriter:
    """A clu metric writer stand-in that keeps what it is given: {step: {tag: value}}."""

    def __init__(self):
        self.scalars, self.images = {}, {}

    def write_scalars(self, step, scalars):
        self.scalars[step] = dict(scalars)

    def write_images(self, step, images):
        self.images[step] = dict(images)
