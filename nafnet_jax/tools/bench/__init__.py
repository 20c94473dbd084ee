"""`nafnet-bench`: how fast nafnet_jax trains and infers, and the PyTorch original beside it.

    nafnet-bench --model NAFNet-GoPro-width32 --mode forward,train --batch 1 --crop 256 \\
        --torch eager,compile --markdown
    nafnet-bench --config configs/gopro_nafnet_width32.py --mode train --dtype bfloat16 \\
        --profile_dir /tmp/trace

One row per (framework, mode, dtype, depthwise formulation). Method:

* nafnet_jax: each case is a training config (`base_config()` and the model,
  or a config file, with the flags' batch, crop, dtype, grad_accum, fsdp,
  remat, depthwise_impl applied). `--mode train` times the trainer's own step:
  `build_train_setup(config)` -> `setup.init_state()` -> `setup.lower(batch,
  crop).compile()` (`compile_s`), the same optimiser, loss, accumulation,
  non-finite select and shardings `train.py` uses. `--mode forward` jits the
  setup's (platform-specialised) model. After one untimed call and `--warmup`
  steps, `--steps` steps are dispatched back to back over `--input_sets`
  random batches (uniform in [0.05, 1], never zeros) with one wait at the end:
  `ms_per_step` is their mean. `--per_step` waits for each step instead and
  adds the median and spread. FLOPs come from XLA's cost analysis of the
  compiled program; MFU divides the achieved rate by `--peak_tflops` or a
  known peak for the device (none is known for CPUs). `--profile_dir` traces a
  few more steps with `jax.profiler`.
* PyTorch (`--torch`): `nafnet_jax.torch_reference.build_torch_model` (the
  original's architecture and LayerNorm backward) on the same device and
  threads, eager and/or `torch.compile`, float32 or bf16 autocast, inference
  (`torch.inference_mode`) and the original's train step with the config's
  numbers (PSNR loss, clip_grad_norm_, AdamW, cosine LR). Same inputs, same
  timing loop; its TFLOP/s use the FLOPs XLA counted for the same step.
* Rows report ms/step, images/s, TFLOP/s, MFU, peak memory
  (`device.memory_stats()` where the backend has it, else the process's peak
  host RSS during the timed steps, named in `memory_source`), XLA's own memory
  accounting, and the 1-minute load average before and after. Each nafnet_jax
  row carries `speedup_vs_torch_<variant>` = torch ms / jax ms (> 1: nafnet_jax
  is faster), measured in the same run.

Threads (`--threads N`): the process is pinned to N CPUs before any backend
starts and PyTorch gets `torch.set_num_threads(N)`. XLA:CPU flushes denormals to
zero; PyTorch does not by default, so the PyTorch rows run with
`torch.set_flush_denormal(True)` unless `--torch_denormals keep`.

Imports: jax, flax, optax, ml_collections (the configs), and torch only for
`--torch` rows. The configs come from `nafnet_jax.config.base_config()`, which
today also imports `nafnet_jax.data` and with it tensorflow and
tensorflow-datasets (the benchmark itself uses neither).
"""

from nafnet_jax.tools.bench.cli import main, parse_args, run
from nafnet_jax.tools.bench.report import format_markdown, format_table, write_jsonl
from nafnet_jax.tools.bench.timing import known_peak_tflops, summarize_times

__all__ = ["format_markdown", "format_table", "known_peak_tflops", "main", "parse_args", "run",
           "summarize_times", "write_jsonl"]
