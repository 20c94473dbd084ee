"""nafnet-restore: restore image files (or folders of them) with a NAFNet checkpoint.

    nafnet-restore photo.png scans/ -o restored/ --checkpoint runs/gopro32 \\
        [--model NAFNet-GoPro-width32] [--tile 512 --overlap 32] [--ensemble] [--compare] [--use_ema]

Each input image becomes `<output>/<stem>.png` with the input's bit depth
(8 or 16), grayscale kept grayscale (the model sees it replicated to RGB; the
output is the mean of the restored channels) and any alpha channel copied
unchanged. `--compare` also writes `<stem>_compare.png`: input | output side by
side. Existing outputs are never replaced without `--overwrite`; files are
written to a temporary name and renamed. A file that cannot be read or
restored is reported by name and the rest are still processed; the exit code
is 1 if any failed (2 for a usage or model error, before any image is written).

By default each image goes through the model at its own size (`--bucket 0`,
the original's numerics; one compilation per distinct size). `--bucket B`
pads sizes up to multiples of B so that sizes share compilations, at a cost
in accuracy near the bottom/right borders: the U-Net's receptive field
reaches far past the padding, so border pixels see different content than in
exact mode. Measured in issue 10 with NAFNet-GoPro-width32 at `--bucket 64`:
the last column of a 1000x998 image off by 7.7/255 on average (36/255 at
most), the last row of a 4000x3000 photo by 15/255 (46/255 at most).
`--tile 512` stayed within 1/255 of exact mode there. A damaged newest
checkpoint is reported and the newest intact one is used instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nafnet_jax import cli
from nafnet_jax.cli import UsageError

PROG = "nafnet-restore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nafnet-restore", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", help="image files and/or folders (their files, not recursive)")
    p.add_argument("-o", "--output", required=True, help="output folder (created if missing)")
    p.add_argument("--checkpoint", required=True,
                   help="a train.py workdir, its checkpoints dir, or a converted-weights dir")
    p.add_argument("--model", default=None,
                   help="published model name; must agree with the checkpoint's architecture")
    p.add_argument("--tile", type=int, default=None, help="tile size for tiled inference (default: whole image)")
    p.add_argument("--overlap", type=int, default=32, help="minimum overlap between tiles (pixels)")
    p.add_argument("--tile-batch", type=int, default=4, help="tiles per model call")
    p.add_argument("--bucket", type=int, default=0,
                   help="0 (default): exact sizes, the original's numerics. B > 0: pad sizes up to "
                        "multiples of B so sizes share one compilation; faster for many sizes but "
                        "changes pixels near the bottom/right borders (measured: up to 36-46/255 at "
                        "B=64 on the GoPro model; see above)")
    p.add_argument("--use_ema", "--use-ema", action="store_true",
                   help="restore with the checkpoint's EMA parameters (kept when train.ema_decay > 0)")
    p.add_argument("--ensemble", action="store_true", help="x8 self-ensemble (8 times slower)")
    p.add_argument("--compare", action="store_true", help="also write <stem>_compare.png (input | output)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--debug", action="store_true", help=f"print tracebacks with errors (also: {cli.DEBUG_ENV}=1)")
    return p


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------

def architecture_mismatch(name: str, model_config: Mapping[str, Any]) -> List[str]:
    """Differences between a published model's architecture and a checkpoint's (empty if they agree)."""
    # The parameter-shaping fields, and TLC, which changes the outputs (not the parameters).
    from nafnet_jax.training.checkpointing import OUTPUT_FIELDS, PARAMETER_FIELDS, architecture_differences
    from nafnet_jax.models import PUBLISHED, build_model, get_model
    if name not in PUBLISHED:
        raise UsageError(f"--model {name!r} is not a published model; known: {', '.join(sorted(PUBLISHED))}")
    return architecture_differences(get_model(name), build_model(model_config), PARAMETER_FIELDS + OUTPUT_FIELDS,
                                    names=("--model", "checkpoint"))


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def load_restorer(args: argparse.Namespace) -> Any:
    """Loads the checkpoint and builds the `Restorer` the command line asks for."""
    import jax

    from nafnet_jax.training import checkpointing, partitioning
    from nafnet_jax.evaluation import inference
    from nafnet_jax.models import build_model
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax's read-only notices are not news to a CLI user
    try:
        params, model_config = checkpointing.load_model_checkpoint(args.checkpoint, use_ema=args.use_ema,
                                                                   report=_warn)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise UsageError(f"cannot load checkpoint {args.checkpoint}: {cli.error_message(e)}") from e
    finally:
        absl_logger.setLevel(level)
    if args.model:
        differences = architecture_mismatch(args.model, model_config)
        if differences:
            raise UsageError(f"--model {args.model} does not match checkpoint {args.checkpoint}: "
                             + checkpointing.summarize_differences(differences))
    # Inference runs on this process's first device: the model is specialised for its platform.
    model = build_model(model_config, platform=partitioning.devices_platform(jax.local_devices()[:1]))
    if model.img_channel != 3:
        raise UsageError(f"the checkpoint's model takes {model.img_channel} channels; this tool feeds RGB")
    try:
        return inference.Restorer(inference.model_apply_fn(model), params, bucket=args.bucket or None,
                                  tile=args.tile, overlap=args.overlap, tile_batch=args.tile_batch,
                                  align=2 ** len(model.enc_blk_nums), ensemble=args.ensemble)
    except ValueError as e:
        raise UsageError(str(e)) from e


# ---------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------

def collect_inputs(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[str, str]]]:
    """Expands folders (their regular, non-hidden files, sorted); returns (files, failures)."""
    files, failures = [], []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            failures.append((raw, "no such file or folder"))
    return files, failures


def plan_outputs(files: Sequence[Path], out_dir: Path, compare: bool,
                 overwrite: bool) -> Tuple[List[Tuple[Path, Path, Optional[Path]]], List[Tuple[str, str]]]:
    """(source, output, compare-output) per file; name collisions and existing outputs fail."""
    jobs, failures, taken = [], [], {}
    for src in files:
        dst = out_dir / f"{src.stem}.png"
        cmp = out_dir / f"{src.stem}_compare.png" if compare else None
        if dst in taken:
            failures.append((str(src), f"output {dst} would collide with the output of {taken[dst]}"))
            continue
        taken[dst] = src
        existing = [p for p in (dst, cmp) if p is not None and p.exists()]
        if existing and not overwrite:
            failures.append((str(src), f"{existing[0]} exists (pass --overwrite to replace it)"))
            continue
        jobs.append((src, dst, cmp))
    return jobs, failures


def restore_file(restorer: Any, src: Path, dst: Path, compare: Optional[Path], overwrite: bool) -> Dict[str, Any]:
    """Reads, restores and writes one image (and its comparison picture)."""
    from nafnet_jax.data import image_io
    picture = image_io.read_image(src)
    restored = restorer(picture.rgb)
    out = image_io.picture_to_array(restored, picture.bit_depth, picture.grayscale, picture.alpha)
    image_io.write_png(dst, out, overwrite=overwrite)
    if compare is not None:
        before = image_io.picture_to_array(picture.rgb, picture.bit_depth, picture.grayscale, picture.alpha)
        image_io.write_png(compare, np.concatenate([before, out], axis=1), overwrite=overwrite)
    return {"shape": picture.rgb.shape[:2], "bit_depth": picture.bit_depth}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The nafnet-restore command (exit statuses: see the module docstring and nafnet_jax.cli)."""
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()  # before image_io imports TensorFlow
    return cli.run_main(lambda: _restore_all(args), PROG, sys.argv if argv is None else argv)


def _restore_all(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    if args.bucket < 0:
        raise UsageError(f"--bucket {args.bucket}: expected 0 (exact sizes) or a positive size")
    cli.check_output_dir(str(out_dir), "--output")  # creates nothing: a usage error leaves no trace
    files, failures = collect_inputs(args.inputs)
    jobs, skipped = plan_outputs(files, out_dir, args.compare, args.overwrite)
    failures += skipped
    for name, reason in failures:
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    done = 0
    if jobs:
        restorer = load_restorer(args)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--output {out_dir}: cannot create the folder ({e.strerror or e})") from e
        for src, dst, cmp in jobs:
            start = time.perf_counter()
            try:
                info = restore_file(restorer, src, dst, cmp, args.overwrite)
            except Exception as e:  # report the file by name and go on with the others
                message = str(e) if str(src) in str(e) else f"{src}: {type(e).__name__}: {e}"
                failures.append((str(src), message))
                print(f"FAILED {message}", file=sys.stderr)
                continue
            done += 1
            h, w = info["shape"]
            print(f"{src} -> {dst} ({w}x{h}, {info['bit_depth']}-bit, {time.perf_counter() - start:.2f} s)")
    print(f"restored {done} image(s), {len(failures)} failed", file=sys.stderr if failures else sys.stdout)
    return cli.EXIT_FAILURE if failures else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
