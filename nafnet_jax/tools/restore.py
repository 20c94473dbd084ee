"""nafnet-restore: restore image files (or folders of them) with a NAFNet checkpoint.

    nafnet-restore photo.png scans/ -o restored/ --checkpoint runs/gopro32 \\
        [--model NAFNet-GoPro-width32] [--tile 512 --overlap 32] [--ensemble] [--compare] [--use_ema]
    nafnet-restore --left L.png --right R.png -o sr/ --checkpoint nafssr_x4        # a stereo pair
    nafnet-restore --left_dir lefts/ --right_dir rights/ -o sr/ --checkpoint nafssr_x4

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

Stereo super-resolution (a NAFSSR checkpoint) takes left/right pairs instead of
images: `--left/--right` (one pair, known by the left file's stem) or
`--left_dir/--right_dir` (files paired by stem). Each pair becomes
`<output>/<name>_L.png` and `<name>_R.png`, `scale` times larger, each view
with its file's bit depth and grayscale kept (an alpha channel is upsampled
bilinearly). `--compare` writes `<name>_compare.png` (8-bit): the input
upsampled bilinearly (the model's own skip) | the output, left view above the
right. Pairs run whole (no --tile, no --bucket: the cross-view attention spans
entire rows, so padding or tiling would change the result); `--ensemble` is
the x4 stereo ensemble (flips; a horizontal flip swaps the views). A stereo
checkpoint given single images, or a single-image checkpoint given a pair, is
a usage error.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nafnet_jax import cli
from nafnet_jax.cli import UsageError

PROG = "nafnet-restore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nafnet-restore", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", help="image files and/or folders (their files, not recursive)")
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
    p.add_argument("--ensemble", action="store_true",
                   help="x8 self-ensemble (8 times slower); x4 flips for stereo pairs")
    p.add_argument("--compare", action="store_true", help="also write <stem>_compare.png (input | output)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--debug", action="store_true", help=f"print tracebacks with errors (also: {cli.DEBUG_ENV}=1)")
    pairs = p.add_argument_group("stereo pairs (a stereo SR checkpoint such as NAFSSR)")
    pairs.add_argument("--left", default=None, help="left view of one pair (with --right)")
    pairs.add_argument("--right", default=None, help="right view of one pair (with --left)")
    pairs.add_argument("--left_dir", "--left-dir", default=None,
                       help="folder of left views (with --right_dir; files paired by stem)")
    pairs.add_argument("--right_dir", "--right-dir", default=None, help="folder of right views (with --left_dir)")
    pairs.add_argument("--channel_order", "--channel-order", choices=("rgb", "bgr"), default="rgb",
                       help="the order the model sees each view's colours in: rgb (default, as the original's "
                            "demo_ssr.py) or bgr (as its training data); files are RGB either way")
    return p


# ---------------------------------------------------------------------------
# Model.
# ---------------------------------------------------------------------------

def architecture_mismatch(name: str, model_config: Mapping[str, Any]) -> List[str]:
    """Differences between a published model's architecture and a checkpoint's (empty if they agree)."""
    # The parameter-shaping fields, and TLC, which changes the outputs (not the parameters).
    from nafnet_jax.training.checkpointing import OUTPUT_FIELDS, PARAMETER_FIELDS, architecture_differences
    from nafnet_jax.models import PUBLISHED, PUBLISHED_NAFSSR, build_model, get_model
    published = {**PUBLISHED, **PUBLISHED_NAFSSR}
    if name not in published:
        raise UsageError(f"--model {name!r} is not a published model; known: {', '.join(sorted(published))}")
    return architecture_differences(get_model(name), build_model(model_config), PARAMETER_FIELDS + OUTPUT_FIELDS,
                                    names=("--model", "checkpoint"))


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def load_model(args: argparse.Namespace) -> Tuple[Any, Any]:
    """(model, params) of the checkpoint, the model built for this process's first device."""
    import jax

    from nafnet_jax.training import checkpointing, partitioning
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
    return model, params


def load_restorer(args: argparse.Namespace) -> Any:
    """Loads the checkpoint and builds the `Restorer` the command line asks for (single images)."""
    from nafnet_jax.evaluation import inference, stereo
    model, params = load_model(args)
    if stereo.is_stereo_model(model):
        raise UsageError(f"the checkpoint {args.checkpoint} holds a stereo SR model (left/right pairs); give "
                         "each pair with --left/--right or folders with --left_dir/--right_dir, not single images")
    if model.img_channel != 3:
        raise UsageError(f"the checkpoint's model takes {model.img_channel} channels; this tool feeds RGB")
    try:
        return inference.Restorer(inference.model_apply_fn(model), params, bucket=args.bucket or None,
                                  tile=args.tile, overlap=args.overlap, tile_batch=args.tile_batch,
                                  align=2 ** len(model.enc_blk_nums), ensemble=args.ensemble)
    except ValueError as e:
        raise UsageError(str(e)) from e


def load_stereo_restorer(args: argparse.Namespace) -> Any:
    """Loads a stereo SR checkpoint and builds its `StereoRestorer` (whole pairs, optional x4 ensemble)."""
    from nafnet_jax.evaluation import inference, stereo
    model, params = load_model(args)
    if not stereo.is_stereo_model(model):
        raise UsageError(f"--left/--right and --left_dir/--right_dir take a stereo SR checkpoint; "
                         f"{args.checkpoint} holds a {model.img_channel}-channel single-image model: give "
                         "the images as positional inputs")
    return stereo.StereoRestorer(inference.model_apply_fn(model), params, scale=stereo.model_scale(model),
                                 ensemble=args.ensemble)


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


# ---------------------------------------------------------------------------
# Stereo pairs.
# ---------------------------------------------------------------------------

def _files_by_stem(folder: Path, flag: str) -> Tuple[Dict[str, Path], List[Tuple[str, str]]]:
    """stem -> file of a folder's regular, non-hidden files; two files of one stem fail."""
    found: Dict[str, Path] = {}
    failures = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.stem in found:
            failures.append((str(path), f"{flag}: {path.name} and {found[path.stem].name} share the stem "
                                        f"{path.stem!r}"))
            continue
        found[path.stem] = path
    return found, failures


def collect_pairs(args: argparse.Namespace) -> Tuple[List[Tuple[str, Path, Path]], List[Tuple[str, str]]]:
    """(name, left file, right file) per pair from --left/--right or --left_dir/--right_dir; (pairs, failures)."""
    if args.left:
        left, right = Path(args.left), Path(args.right)
        failures = [(str(p), "no such file") for p in (left, right) if not p.is_file()]
        return ([] if failures else [(left.stem, left, right)]), failures
    folders = {"--left_dir": Path(args.left_dir), "--right_dir": Path(args.right_dir)}
    for flag, folder in folders.items():
        if not folder.is_dir():
            raise UsageError(f"{flag} {folder} is not a folder")
    lefts, failures = _files_by_stem(folders["--left_dir"], "--left_dir")
    rights, more = _files_by_stem(folders["--right_dir"], "--right_dir")
    failures += more
    failures += [(str(lefts[s]), f"{lefts[s]}: no right view of stem {s!r} in --right_dir {args.right_dir}")
                 for s in sorted(set(lefts) - set(rights))]
    failures += [(str(rights[s]), f"{rights[s]}: no left view of stem {s!r} in --left_dir {args.left_dir}")
                 for s in sorted(set(rights) - set(lefts))]
    return [(s, lefts[s], rights[s]) for s in sorted(set(lefts) & set(rights))], failures


def plan_pair_outputs(pairs: Sequence[Tuple[str, Path, Path]], out_dir: Path, compare: bool, overwrite: bool
                      ) -> Tuple[List[Tuple[str, Path, Path, Tuple[Path, Path], Optional[Path]]],
                                 List[Tuple[str, str]]]:
    """(name, left, right, (left output, right output), compare output) per pair; existing outputs fail."""
    from nafnet_jax.evaluation.stereo import view_file_names
    jobs, failures = [], []
    for name, left, right in pairs:
        dsts = tuple(out_dir / n for n in view_file_names(name))
        cmp = out_dir / f"{name}_compare.png" if compare else None
        existing = [p for p in (*dsts, cmp) if p is not None and p.exists()]
        if existing and not overwrite:
            failures.append((str(left), f"{existing[0]} exists (pass --overwrite to replace it)"))
            continue
        jobs.append((name, left, right, dsts, cmp))
    return jobs, failures


def _upsampled_alpha(alpha: Optional[np.ndarray], bit_depth: int, scale: int) -> Optional[np.ndarray]:
    """An alpha channel brought to the output's size (bilinear, in the file's depth)."""
    if alpha is None:
        return None
    from nafnet_jax.data import image_io
    from nafnet_jax.evaluation.stereo import bilinear_upsample
    unit = alpha.astype(np.float32)[..., None] / float((1 << bit_depth) - 1)
    return image_io.quantize(bilinear_upsample(unit, scale), bit_depth)[..., 0]


def restore_pair(restorer: Any, left: Path, right: Path, dsts: Tuple[Path, Path], compare: Optional[Path],
                 overwrite: bool, channel_order: str = "rgb") -> Dict[str, Any]:
    """Reads, super-resolves and writes one stereo pair (and its comparison picture).

    `channel_order` is the model's view order ('rgb' or 'bgr'); files are RGB.
    """
    from nafnet_jax.data import image_io
    from nafnet_jax.evaluation import stereo
    views = [image_io.read_image(left), image_io.read_image(right)]
    if views[0].rgb.shape != views[1].rgb.shape:
        (h0, w0), (h1, w1) = views[0].rgb.shape[:2], views[1].rgb.shape[:2]
        raise ValueError(f"{left} is {w0}x{h0} but {right} is {w1}x{h1}: the views of a pair must have one size")
    pair = stereo.join_views(views[0].rgb, views[1].rgb)
    restored = stereo.to_channel_order(restorer(stereo.to_channel_order(pair, channel_order)), channel_order)
    outputs = stereo.split_views(restored)
    for view, out, dst in zip(views, outputs, dsts):
        alpha = _upsampled_alpha(view.alpha, view.bit_depth, restorer.scale)
        image_io.write_png(dst, image_io.picture_to_array(out, view.bit_depth, view.grayscale, alpha),
                           overwrite=overwrite)
    if compare is not None:
        rows = [np.concatenate([stereo.bilinear_upsample(v.rgb, restorer.scale), o], axis=1)
                for v, o in zip(views, outputs)]
        image_io.write_png(compare, image_io.quantize(np.concatenate(rows, axis=0), 8), overwrite=overwrite)
    return {"shape": pair.shape[:2], "out_shape": restored.shape[:2]}


def _restore_pairs(args: argparse.Namespace) -> int:
    """The stereo mode of nafnet-restore (--left/--right or --left_dir/--right_dir)."""
    if args.inputs:
        raise UsageError(f"positional inputs ({args.inputs[0]} ...) cannot be mixed with stereo pairs "
                         "(--left/--right, --left_dir/--right_dir)")
    if bool(args.left) != bool(args.right):
        raise UsageError("--left and --right go together (one stereo pair)")
    if bool(args.left_dir) != bool(args.right_dir):
        raise UsageError("--left_dir and --right_dir go together (two folders of views paired by stem)")
    if args.left and args.left_dir:
        raise UsageError("give one pair (--left/--right) or two folders (--left_dir/--right_dir), not both")
    if args.tile or args.bucket:
        raise UsageError("--tile/--bucket do not apply to stereo pairs: the model attends along whole rows, "
                         "so pairs run whole (no padding, no tiles)")
    out_dir = Path(args.output)
    cli.check_output_dir(str(out_dir), "--output")
    pairs, failures = collect_pairs(args)
    jobs, skipped = plan_pair_outputs(pairs, out_dir, args.compare, args.overwrite)
    failures += skipped

    def restore_one(restorer: Any, job: Tuple) -> str:
        _, left, right, dsts, cmp = job
        start = time.perf_counter()
        info = restore_pair(restorer, left, right, dsts, cmp, args.overwrite, args.channel_order)
        (h, w), (sh, sw) = info["shape"], info["out_shape"]
        return (f"{left} + {right} -> {dsts[0]}, {dsts[1]} ({w}x{h} -> {sw}x{sh}, "
                f"{time.perf_counter() - start:.2f} s)")

    return _run_jobs(jobs, failures, out_dir, lambda: load_stereo_restorer(args), restore_one,
                     lambda job: (str(job[1]), f"{job[1]} + {job[2]}"), "pair(s)")


def _run_jobs(jobs: Sequence[Tuple], failures: List[Tuple[str, str]], out_dir: Path, load: Callable[[], Any],
              restore_one: Callable[[Any, Tuple], str], label: Callable[[Tuple], Tuple[str, str]],
              unit: str) -> int:
    """Restores every job, reporting a failed one by name and going on; returns the exit status.

    `load` builds the restorer (only when there is work); `restore_one(restorer, job)` returns the
    line to print; `label(job)` is (the name a failure is filed under, the prefix of its message).
    """
    for name, reason in failures:
        print(f"FAILED {name}: {reason}", file=sys.stderr)
    done = 0
    if jobs:
        restorer = load()
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--output {out_dir}: cannot create the folder ({e.strerror or e})") from e
        for job in jobs:
            name, prefix = label(job)
            try:
                line = restore_one(restorer, job)
            except Exception as e:  # report the input by name and go on with the others
                message = str(e) if name in str(e) else f"{prefix}: {type(e).__name__}: {e}"
                failures.append((name, message))
                print(f"FAILED {message}", file=sys.stderr)
                continue
            done += 1
            print(line)
    print(f"restored {done} {unit}, {len(failures)} failed", file=sys.stderr if failures else sys.stdout)
    return cli.EXIT_FAILURE if failures else cli.EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The nafnet-restore command (exit statuses: see the module docstring and nafnet_jax.cli)."""
    args = build_parser().parse_args(argv)
    cli.quiet_tensorflow()  # before image_io imports TensorFlow
    return cli.run_main(lambda: _restore_all(args), PROG, sys.argv if argv is None else argv)


def _restore_all(args: argparse.Namespace) -> int:
    out_dir = Path(args.output)
    if args.bucket < 0:
        raise UsageError(f"--bucket {args.bucket}: expected 0 (exact sizes) or a positive size")
    if args.left or args.right or args.left_dir or args.right_dir:
        return _restore_pairs(args)
    if not args.inputs:
        raise UsageError("nothing to restore: give image files/folders, or a stereo pair with --left/--right "
                         "(folders: --left_dir/--right_dir)")
    cli.check_output_dir(str(out_dir), "--output")  # creates nothing: a usage error leaves no trace
    files, failures = collect_inputs(args.inputs)
    jobs, skipped = plan_outputs(files, out_dir, args.compare, args.overwrite)
    failures += skipped

    def restore_one(restorer: Any, job: Tuple) -> str:
        src, dst, cmp = job
        start = time.perf_counter()
        info = restore_file(restorer, src, dst, cmp, args.overwrite)
        h, w = info["shape"]
        return f"{src} -> {dst} ({w}x{h}, {info['bit_depth']}-bit, {time.perf_counter() - start:.2f} s)"

    return _run_jobs(jobs, failures, out_dir, lambda: load_restorer(args), restore_one,
                     lambda job: (str(job[0]), str(job[0])), "image(s)")


if __name__ == "__main__":
    sys.exit(main())
