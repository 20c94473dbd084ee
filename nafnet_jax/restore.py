"""nafnet-restore: restore image files (or folders of them) with a NAFNet checkpoint.

    nafnet-restore photo.png scans/ -o restored/ --checkpoint runs/gopro32 \\
        [--model NAFNet-GoPro-width32] [--tile 512 --overlap 32] [--ensemble] [--compare]

Each input image becomes `<output>/<stem>.png` with the input's bit depth
(8 or 16), grayscale kept grayscale (the model sees it replicated to RGB; the
output is the mean of the restored channels) and any alpha channel copied
unchanged. `--compare` also writes `<stem>_compare.png`: input | output side by
side. Existing outputs are never replaced without `--overwrite`; files are
written to a temporary name and renamed. A file that cannot be read or
restored is reported by name and the rest are still processed; the exit code
is 1 if any failed (2 for a usage or model error).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

ARCHITECTURE_FIELDS = ("block", "width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums", "img_channel",
                       "tlc_train_size")


class UsageError(Exception):
    """A problem with the command line or the model (exit code 2)."""


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
    p.add_argument("--bucket", type=int, default=64,
                   help="pad sizes up to multiples of this so several sizes share one compilation; "
                        "0 = exact sizes (the original's numerics)")
    p.add_argument("--ensemble", action="store_true", help="x8 self-ensemble (8 times slower)")
    p.add_argument("--compare", action="store_true", help="also write <stem>_compare.png (input | output)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    return p


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------

def architecture_mismatch(name: str, model_config: Mapping[str, Any]) -> List[str]:
    """Differences between a published model's architecture and a checkpoint's (empty if they agree)."""
    from nafnet_jax.models import PUBLISHED, build_model, get_model
    if name not in PUBLISHED:
        raise UsageError(f"--model {name!r} is not a published model; known: {', '.join(sorted(PUBLISHED))}")
    wanted, saved = get_model(name), build_model(model_config)
    return [f"{field}: --model has {getattr(wanted, field)!r}, checkpoint has {getattr(saved, field)!r}"
            for field in ARCHITECTURE_FIELDS if getattr(wanted, field) != getattr(saved, field)]


def load_restorer(args: argparse.Namespace) -> Any:
    """Loads the checkpoint and builds the `Restorer` the command line asks for."""
    from nafnet_jax import checkpointing, inference
    from nafnet_jax.models import build_model
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)  # Orbax's read-only notices are not news to a CLI user
    try:
        params, model_config = checkpointing.load_model_checkpoint(args.checkpoint)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise UsageError(f"cannot load checkpoint {args.checkpoint}: {e}") from e
    finally:
        absl_logger.setLevel(level)
    if args.model:
        differences = architecture_mismatch(args.model, model_config)
        if differences:
            raise UsageError(f"--model {args.model} does not match checkpoint {args.checkpoint}:\n  "
                             + "\n  ".join(differences))
    model = build_model(model_config)
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
    from nafnet_jax import image_io
    picture = image_io.read_image(src)
    restored = restorer(picture.rgb)
    out = image_io.picture_to_array(restored, picture.bit_depth, picture.grayscale, picture.alpha)
    image_io.write_png(dst, out, overwrite=overwrite)
    if compare is not None:
        before = image_io.picture_to_array(picture.rgb, picture.bit_depth, picture.grayscale, picture.alpha)
        image_io.write_png(compare, np.concatenate([before, out], axis=1), overwrite=overwrite)
    return {"shape": picture.rgb.shape[:2], "bit_depth": picture.bit_depth}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    out_dir = Path(args.output)
    if out_dir.exists() and not out_dir.is_dir():
        print(f"nafnet-restore: error: --output {out_dir} is not a folder", file=sys.stderr)
        return 2
    files, failures = collect_inputs(args.inputs)
    out_dir.mkdir(parents=True, exist_ok=True)
    jobs, skipped = plan_outputs(files, out_dir, args.compare, args.overwrite)
    failures += skipped
    for name, reason in failures:
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    done = 0
    if jobs:
        try:
            restorer = load_restorer(args)
        except UsageError as e:
            print(f"nafnet-restore: error: {e}", file=sys.stderr)
            return 2
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
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
