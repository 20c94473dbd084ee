"""The ablation runner (`nafnet-ablation`): a tiny two-rung ladder trained through the real trainer.

The config file here is the runner's input contract, `get_config("<rung>,<dataset>")`,
with the rung's block on a 1-level width-4 U-Net and a few 40x40 PNG pairs, so the
whole run is seconds of compute; the figures are not checked for speed, only present.
"""

from __future__ import annotations

import json
import textwrap

import jax
import pytest

from nafnet_jax.models import ABLATION_LADDER
from nafnet_jax.tools import ablation
from test_configs import unet_params
from trainer_helpers import write_pairs

RUNGS = ("plainnet", "nafnet")
COLUMNS = ("params", "gmacs", "step_ms", "val_psnr", "val_ssim")

CONFIG = textwrap.dedent("""
    import dataclasses

    from nafnet_jax.config import base_config, model_config
    from nafnet_jax.models.blocks import ABLATION_LADDER

    DIRS = {dirs!r}


    def get_config(config_string):
        rung, _, dataset = config_string.partition(",")
        if dataset != "tiny":
            raise ValueError(f"unknown dataset {{dataset!r}}")
        config = base_config()
        config.model = model_config(width=4, enc_blk_nums=(1,), middle_blk_num=1, dec_blk_nums=(1,),
                                    **dataclasses.asdict(ABLATION_LADDER[rung]))
        config.data.dataset = "paired_folder"
        config.data.lq_dir, config.data.gt_dir = DIRS["train_lq"], DIRS["train_gt"]
        config.data.eval_lq_dir, config.data.eval_gt_dir = DIRS["eval_lq"], DIRS["eval_gt"]
        config.data.crop_size = 16
        config.data.crops_per_image = 1
        config.eval.protocol = "float"
        config.train.batch_size = 2
        config.train.async_checkpoints = False
        # The trainer's default persistent cache (<workdir>/compile_cache): the runner's timed compile of
        # the same step is then a cache load, not a second compilation.
        config.train.compilation_cache_dir = ""
        config.train.num_val_images = 0
        return config
""")


@pytest.fixture(scope="module")
def ladder_run(tmp_path_factory):
    """One 2-rung run of 2 steps each; returns (workdir, config path, exit status, printed text)."""
    root = tmp_path_factory.mktemp("ablation")
    dirs = write_pairs(root / "data", n_train=4, n_eval=2, size=24)
    config_path = root / "tiny_ablation.py"
    config_path.write_text(CONFIG.format(dirs=dirs))
    workdir = root / "run"
    args = ["--config", str(config_path), "--dataset", "tiny", "--steps", "2", "--rungs", ",".join(RUNGS),
            "--workdir", str(workdir), "--timing_steps", "2"]
    return workdir, config_path, args


def _run_fast(args) -> int:
    """`ablation.main(args)` with counter-based RBG keys: XLA:CPU compiles the trainer's threefry init
    about twice as slowly, and which random bits the tiny models start from does not matter here."""
    with jax.default_prng_impl("unsafe_rbg"):
        return ablation.main(args)


def test_ladder_run_writes_one_table_with_every_column(ladder_run, capsys):
    workdir, _, args = ladder_run
    assert _run_fast(args) == 0
    printed = capsys.readouterr().out
    data = json.loads((workdir / ablation.TABLE_JSON).read_text())
    rows = {r["rung"]: r for r in data["rows"]}
    assert list(rows) == list(RUNGS)
    for rung, row in rows.items():
        missing = [c for c in COLUMNS if row.get(c) is None]
        assert not missing, f"{rung}: no {missing} in {row}"
        assert row["steps"] == 2
        assert row["step_ms"] > 0 and 0 < row["val_ssim"] <= 1
        want = unet_params(4, (1,), 1, (1,), ABLATION_LADDER[rung])
        assert row["params"] == want, f"{rung}: {row['params']} params, the layer list gives {want}"
        assert (workdir / rung / "config.json").exists()
    assert data["meta"]["steps"] == 2 and data["meta"]["dataset"] == "tiny"
    markdown = (workdir / ablation.TABLE_MD).read_text()
    assert "| rung | params | GMACs @256^2 | lr | step ms | val PSNR | val SSIM |" in markdown
    for rung, row in rows.items():
        assert f"| {rung} | {row['params']:,} |" in markdown
        assert f"{row['val_psnr']:.3f}" in markdown
    assert markdown in printed, "the table is also printed"


def test_existing_run_is_not_clobbered_without_overwrite(ladder_run, capsys):
    workdir, _, args = ladder_run
    if not (workdir / ablation.TABLE_JSON).exists():
        assert _run_fast(args) == 0
    before = (workdir / ablation.TABLE_JSON).read_text()
    assert ablation.main(args) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and str(workdir / RUNGS[0]) in err
    assert (workdir / ablation.TABLE_JSON).read_text() == before


def test_overwrite_spares_folders_the_runner_did_not_make(ladder_run, tmp_path, capsys):
    _, config_path, args = ladder_run
    workdir = tmp_path / "run"
    mine = workdir / RUNGS[0]
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    args = [*args[:-4], "--workdir", str(workdir), "--timing_steps", "2", "--overwrite"]
    assert ablation.main(args) == 2
    assert "not made by" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "my notes"


def test_unknown_rung_is_a_usage_error_naming_it(tmp_path, capsys):
    code = ablation.main(["--steps", "1", "--rungs", "nafnet,plainnet+bn", "--workdir", str(tmp_path / "w")])
    assert code == 2
    assert "plainnet+bn" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_diverged_rung_is_reported_not_dropped():
    meta = {"dataset": "tiny", "steps": 2, "batch_size": 2, "crop_size": 16, "seed": 0, "eval_protocol": "float",
            "devices": "1 x cpu", "cpu": "test", "platform": "cpu", "versions": {"jax": "0"}, "date": "today",
            "macs_size": 256}
    rows = [{"rung": "plainnet", "params": 10, "gmacs": 0.5, "lr": 1e-4, "status": "diverged: loss was nan",
             "step_ms": None, "val_psnr": None, "val_ssim": None, "val_psnr_input": None}]
    text = ablation.format_markdown(meta, rows)
    assert "| plainnet | 10 | 0.500 | 0.0001 | - | - | - |" in text
    assert "plainnet: diverged: loss was nan" in text
