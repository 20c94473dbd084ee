"""The mesh and the state shardings: FSDP really splits a width-64 model's state.

The FSDP checks build the trainer's own abstract state (`build_train_setup`) for a
published width-64 config on 8 simulated CPU devices with mesh.fsdp=8. jax fixes the
CPU device count when it first initialises, so they run in one subprocess with
`--xla_force_host_platform_device_count=8`; only `jax.eval_shape` runs there (no
parameter is allocated).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types

import jax
import numpy as np
import pytest

from nafnet_jax.training import partitioning
from nafnet_jax.config import base_config, validate_config
from trainer_helpers import REPO, train_env

# Prints, per mesh.min_fsdp_size, the fraction of params / optimiser-state bytes split over fsdp.
_FSDP_REPORT = textwrap.dedent("""
    import json, sys
    import jax
    import numpy as np
    sys.path.insert(0, {repo!r})
    from configs.gopro_nafnet_width64 import get_config
    from nafnet_jax.training.setup import build_train_setup

    def split_fraction(tree):
        total = split = 0
        for leaf in jax.tree.leaves(tree):
            nbytes = int(np.prod(leaf.shape, dtype=np.int64)) * leaf.dtype.itemsize
            total += nbytes
            if "fsdp" in jax.tree.leaves(tuple(leaf.sharding.spec)):
                split += nbytes
        return split / total

    out = {{"devices": jax.device_count()}}
    for min_size in (None, 2 ** 22):
        config = get_config()
        config.mesh.fsdp = 8
        if min_size is not None:
            config.mesh.min_fsdp_size = min_size
        setup = build_train_setup(config)
        state = setup.abstract_state
        out[str(min_size)] = {{"mesh": dict(setup.mesh.shape), "params": split_fraction(state.params),
                               "opt_state": split_fraction(state.opt_state)}}
    print("REPORT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def fsdp_report():
    proc = subprocess.run([sys.executable, "-c", _FSDP_REPORT.format(repo=str(REPO))], env=train_env(8),
                          capture_output=True, text=True, timeout=600, cwd=REPO, stdin=subprocess.DEVNULL)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("REPORT")]
    assert proc.returncode == 0 and lines, f"FSDP report failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("REPORT"):])


def test_fsdp_splits_most_of_a_width64_state(fsdp_report):
    assert fsdp_report["devices"] == 8
    default = fsdp_report["None"]
    assert default["mesh"] == {"data": 1, "fsdp": 8}
    for part in ("params", "opt_state"):  # opt_state: AdamW's two moments (and a step count)
        assert default[part] >= 0.9, f"only {default[part]:.1%} of the {part} bytes are split over fsdp"


def test_min_fsdp_size_keeps_smaller_arrays_replicated(fsdp_report):
    """2**22 elements is above every kernel of the width-64 model: nothing is split."""
    big = fsdp_report[str(2 ** 22)]
    assert big["params"] == 0.0 and big["opt_state"] == 0.0, big


# -------------------------------------------------------------------------------------------------
# The mesh


def test_mesh_has_data_and_fsdp_axes_of_auto_type():
    mesh = partitioning.create_mesh(1)
    assert mesh.axis_names == ("data", "fsdp") and mesh.devices.shape == (1, 1)
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types), mesh.axis_types


@pytest.mark.parametrize("kwargs,key", [(dict(num_devices=99), "mesh.num_devices"),
                                        (dict(fsdp=0), "mesh.fsdp"),
                                        (dict(dcn_data=0), "mesh.dcn_data"),
                                        (dict(dcn_data=2), "mesh.dcn_data")])  # 1 device: 1 data row
def test_mesh_sizes_that_do_not_fit_name_the_key(kwargs, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        partitioning.create_mesh(**kwargs)


def _fake_devices(slices: int, per_slice: int):
    return [types.SimpleNamespace(id=s * per_slice + i, slice_index=s, process_index=s, platform="cpu",
                                  device_kind="cpu") for s in range(slices) for i in range(per_slice)]


def test_multi_slice_grid_keeps_each_slice_on_its_own_data_rows():
    """2 slices of 4 devices, fsdp 2: the data axis (4 rows) spans the slices, fsdp stays inside."""
    grid = partitioning.hybrid_device_grid(_fake_devices(2, 4), data_per_slice=2, fsdp=2, dcn_data=2)
    assert grid.shape == (4, 2)
    slice_of_row = [{d.slice_index for d in row} for row in grid]
    assert slice_of_row == [{0}, {0}, {1}, {1}], slice_of_row
    assert sorted(d.id for d in grid.flat) == list(range(8))


def test_multi_slice_count_must_match_dcn_data():
    with pytest.raises(ValueError, match=r"mesh\.dcn_data=2 must equal the number of slices .* 3"):
        partitioning.hybrid_device_grid(_fake_devices(3, 2), data_per_slice=1, fsdp=2, dcn_data=2)


def test_dcn_data_is_validated_by_the_config():
    config = base_config()
    validate_config(config)
    assert config.mesh.dcn_data == 1
    config.mesh.dcn_data = 0
    with pytest.raises(ValueError, match=r"mesh\.dcn_data=0"):
        validate_config(config)


def test_fsdp_spec_shards_the_largest_divisible_dim_above_the_minimum():
    mesh = partitioning.create_mesh(1)
    state = {"kernel": np.zeros((3, 3, 64, 128), np.float32), "bias": np.zeros((128,), np.float32)}
    # fsdp=1: everything replicated whatever the size.
    specs = jax.tree.map(lambda s: s.spec, partitioning.state_shardings(state, mesh, min_fsdp_size=1))
    assert specs == {"kernel": jax.sharding.PartitionSpec(), "bias": jax.sharding.PartitionSpec()}
    assert partitioning._fsdp_spec((3, 3, 64, 128), 8, 2 ** 14) == jax.sharding.PartitionSpec(
        None, None, None, "fsdp")
    assert partitioning._fsdp_spec((128,), 8, 2 ** 14) == jax.sharding.PartitionSpec()
    assert partitioning._fsdp_spec((3, 3, 1, 7), 8, 1) == jax.sharding.PartitionSpec()  # none divisible
