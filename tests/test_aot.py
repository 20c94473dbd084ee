"""nafnet-aot: the HLO collective parser, the bisection, the chip table, and a deviceless TPU compile.

The compile tests need libtpu (the `tpu` extra) and are skipped without it. They
compile a tiny model on a 2x2 v5e slice from this CPU host; nothing runs on a TPU.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from nafnet_jax.tools import aot
from nafnet_jax.tools.chips import CHIPS, chip_for_topology

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]')")

# A hand-written partitioned module with every kind of collective, in the spellings TPU HLO uses:
# a combined (tuple) all-reduce, async start/done pairs, layouts with tiling and memory-space
# annotations, collectives inside a fused computation, and names that contain collective words
# without being collectives (a computation header, a fusion, an operand).
HLO = """\
HloModule jit_train_step, is_scheduled=true, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%all-to-all.reduce_sub_computation (lhs: f32[], rhs: f32[]) -> f32[] {
  %lhs = f32[] parameter(0)
  %rhs = f32[] parameter(1)
  ROOT %add = f32[] add(%lhs, %rhs)
}

%async_collective_fusion.1 (param_0.1: bf16[2,16,16,8]) -> bf16[8,16,16,8] {
  %param_0.1 = bf16[2,16,16,8]{2,3,1,0:T(8,128)(2,1)} parameter(0)
  ROOT %all-gather.7 = bf16[8,16,16,8]{2,3,1,0:T(8,128)(2,1)S(1)} all-gather(%param_0.1), channel_id=5, replica_groups=[1,4]<=[4], dimensions={0}
}

ENTRY %main.1 (p0: f32[8], p1: bf16[2,16,16,8]) -> f32[8] {
  %p0 = f32[8]{0:T(128)} parameter(0)
  %p1 = bf16[2,16,16,8]{2,3,1,0:T(8,128)(2,1)} parameter(1)
  %all-reduce.3 = (f32[]{:T(128)}, f32[4,8]{1,0:T(4,128)S(1)}, /*index=2*/f32[8]{0:T(128)}) all-reduce(%a, %b, %c), channel_id=1, replica_groups={{0,1,2,3}}, to_apply=%all-to-all.reduce_sub_computation
  %all-gather-start.2 = (f32[2,64]{1,0}, f32[8,64]{1,0}) all-gather-start(%x), channel_id=2, dimensions={0}
  %all-gather-done.2 = f32[8,64]{1,0} all-gather-done(%all-gather-start.2)
  %collective-permute-start = (f32[16]{0}, f32[16]{0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%y), channel_id=3, source_target_pairs={{0,1},{1,0}}
  %collective-permute-done = f32[16]{0} collective-permute-done(%collective-permute-start)
  %reduce-scatter.1 = bf16[4,32]{1,0} reduce-scatter(%z), channel_id=4, dimensions={0}, to_apply=%all-to-all.reduce_sub_computation
  %all-to-all.9 = s32[2,1,1024]{2,1,0:T(1,128)S(1)} all-to-all(%w), channel_id=6, dimensions={0}
  %fusion.all-reduce = f32[8]{0} fusion(%all-reduce.3), kind=kLoop, calls=%fused
  %ag = bf16[8,16,16,8]{2,3,1,0} fusion(%p1), kind=kCustom, calls=%async_collective_fusion.1
  ROOT %add.2 = f32[8]{0} add(%p0, %fusion.all-reduce)
}
"""


def test_count_collectives_counts_ops_pairs_once_with_result_bytes():
    got = aot.count_collectives(HLO)
    want = {
        "all-reduce": {"count": 1, "bytes": 4 + 4 * 8 * 4 + 8 * 4},
        "all-gather": {"count": 2, "bytes": 8 * 64 * 4 + 8 * 16 * 16 * 8 * 2},
        "collective-permute": {"count": 1, "bytes": 16 * 4},
        "reduce-scatter": {"count": 1, "bytes": 4 * 32 * 2},
        "all-to-all": {"count": 1, "bytes": 2 * 1024 * 4},
    }
    assert got == want, f"parsed {got}, expected {want}"


def test_count_collectives_of_a_module_without_any_is_all_zero():
    got = aot.count_collectives("ENTRY %m (p: f32[2]) -> f32[2] {\n  ROOT %p = f32[2]{0} parameter(0)\n}\n")
    assert all(v == {"count": 0, "bytes": 0} for v in got.values()), got


def test_shape_bytes_rejects_an_unknown_element_type():
    with pytest.raises(ValueError, match="q7"):
        aot.shape_bytes("q7[3]{0}")


@pytest.mark.parametrize("boundary,limit,want", [(0, 64, 0), (1, 64, 1), (5, 64, 5), (37, 64, 37),
                                                 (64, 64, 64), (100, 64, 64)])
def test_largest_fitting_finds_the_boundary_by_bisection(boundary, limit, want):
    asked = []

    def fits(k):
        asked.append(k)
        return k <= boundary

    assert aot.largest_fitting(fits, limit) == want
    assert len(asked) <= 2 * limit.bit_length() + 1, f"too many compiles: {asked}"


def test_chip_for_topology_reads_the_generation_and_rejects_unknown_ones():
    assert chip_for_topology("v5e:2x4") is CHIPS["v5e"]
    assert chip_for_topology("v5p:2x2x1").hbm_bytes == 95 * 10 ** 9
    with pytest.raises(ValueError, match="v9z"):
        chip_for_topology("v9z:2x2")


def _tiny_overrides(extra=()):
    return ["--config", os.path.join(REPO, "configs", "demo.py"), "--topology", "v5e:2x2",
            "--config.model.width=4", "--config.model.enc_blk_nums=(1,)", "--config.model.dec_blk_nums=(1,)",
            "--config.model.middle_blk_num=1", "--config.data.crop_size=16", "--config.train.batch_size=8",
            *extra]


def _run_aot(args):
    env = dict(os.environ, JAX_PLATFORMS="cpu", ALLOW_MULTIPLE_LIBTPU_LOAD="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", "nafnet_jax.tools.aot", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=600)
    assert proc.returncode == 0, f"nafnet-aot failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_libtpu
def test_aot_json_reports_a_data_parallel_train_step_on_v5e():
    r = _run_aot(_tiny_overrides(["--json"]))
    for key in ("fits", "hbm_bytes", "per_chip_bytes", "flops", "bytes_accessed", "roofline_step_s",
                "collectives", "compile_s"):
        assert key in r, f"missing key {key!r} in {sorted(r)}"
    assert r["platform"] == "tpu" and r["num_chips"] == 4 and r["mesh"] == {"data": 4, "fsdp": 1}
    assert r["fits"] is True and r["hbm_bytes"] == CHIPS["v5e"].hbm_bytes
    b = r["per_chip_bytes"]
    assert b["argument"] > 0 and b["output"] > 0 and b["temp"] > 0 and b["total"] < r["hbm_bytes"], b
    assert r["flops"] > 0 and r["bytes_accessed"] > 0 and r["compile_s"] > 0
    assert r["roofline_step_s"] == pytest.approx(max(r["flops"] / CHIPS["v5e"].bf16_peak_flops,
                                                     r["bytes_accessed"] / CHIPS["v5e"].hbm_bandwidth))
    # Data parallelism: the gradients are summed over the chips.
    assert r["collectives"]["all-reduce"]["count"] >= 1 and r["collectives"]["all-reduce"]["bytes"] > 0, \
        r["collectives"]


@needs_libtpu
@pytest.mark.slow
def test_cost_analysis_is_per_chip():
    """The same global batch on 1 chip and on 4: per-chip flops drop about 4x (what `cost_scope` claims)."""
    one = _run_aot(_tiny_overrides(["--json", "--config.mesh.num_devices=1"]))
    four = _run_aot(_tiny_overrides(["--json"]))
    assert one["num_chips"] == 1 and four["num_chips"] == 4
    ratio = one["flops"] / four["flops"]
    assert 3.0 < ratio < 5.0, \
        f"flops 1 chip {one['flops']:.3g} vs 4 chips {four['flops']:.3g}: ratio {ratio:.2f}"


@needs_libtpu
@pytest.mark.slow
def test_max_batch_stops_at_a_fake_hbm_size():
    """With HBM set to exactly what global batch 12 needs, bisection over multiples of 4 finds 12."""
    need = _run_aot(_tiny_overrides(["--json", "--batch=12"]))["per_chip_bytes"]["total"]
    r = _run_aot(_tiny_overrides(["--json", "--max_batch", f"--hbm_bytes={need}"]))
    assert r["max_batch"] == 12, r["tries"]


@needs_libtpu
@pytest.mark.slow
def test_forward_mode_of_a_data_parallel_model_needs_no_collectives():
    r = _run_aot(_tiny_overrides(["--json", "--mode=forward"]))
    assert r["mode"] == "forward" and r["fits"] is True and r["flops"] > 0
    assert all(v["count"] == 0 for v in r["collectives"].values()), r["collectives"]


def test_hlo_out_never_overwrites_a_file(tmp_path):
    existing = tmp_path / "step.hlo"
    existing.write_text("mine")
    with pytest.raises(FileExistsError, match="step.hlo"):
        aot.aot_report(None, "v5e:2x2", hlo_path=str(existing))  # refused before any compile
    assert existing.read_text() == "mine"


@needs_libtpu
@pytest.mark.slow
def test_fsdp_step_gathers_parameters_not_activations():
    """Under FSDP the step all-gathers each parameter, never activations over the fsdp axis.

    Without the step's explicit parameter gather (`make_grad_fn(param_layout=...)`), XLA:TPU's
    partitioner gathered bf16 activations and added all-to-alls: 53 MB of all-gathers for 4.5 MB of
    parameters on a width-16 model (docs/benchmarks.md).
    """
    import jax

    from nafnet_jax.models import build_model
    from nafnet_jax.config import model_config

    width, enc = 8, (1, 1)
    r = _run_aot(["--config", os.path.join(REPO, "configs", "demo.py"), "--topology", "v5e:2x2",
                  f"--config.model.width={width}", f"--config.model.enc_blk_nums={enc}",
                  f"--config.model.dec_blk_nums={enc}", "--config.model.middle_blk_num=1",
                  "--config.data.crop_size=64", "--config.train.batch_size=8", "--config.mesh.fsdp=2",
                  "--config.mesh.min_fsdp_size=64", "--config.model.dtype=bfloat16", "--json"])
    assert r["mesh"] == {"data": 2, "fsdp": 2}
    model = build_model(model_config(width=width, enc_blk_nums=enc, middle_blk_num=1, dec_blk_nums=enc).to_dict())
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jax.numpy.zeros((1, 64, 64, 3))))["params"]
    param_bytes = sum(x.size * 4 for x in jax.tree.leaves(params))
    col = r["collectives"]
    assert col["all-to-all"]["count"] == 0, col
    assert 0 < col["all-gather"]["bytes"] <= 2 * param_bytes, (col, param_bytes)
