"""Published per-chip facts of TPU generations, for memory checks and roofline bounds.

Sources (Cloud TPU system-architecture pages, per chip):
  v4:  https://cloud.google.com/tpu/docs/v4   (32 GiB HBM2, 1200 GB/s, 275 TFLOP/s bf16)
  v5e: https://cloud.google.com/tpu/docs/v5e  (16 GB HBM2, 819 GB/s, 197 TFLOP/s bf16)
  v5p: https://cloud.google.com/tpu/docs/v5p  (95 GB HBM2e, 2765 GB/s, 459 TFLOP/s bf16)
  v6e: https://cloud.google.com/tpu/docs/v6e  (32 GB HBM, 1638 GB/s, 918 TFLOP/s bf16)
Capacities are taken as the pages state them (GB = 1e9 bytes, GiB = 2**30); the
runtime reserves a little of it, so a program that "fits" with almost no headroom
may still fail to load.
"""

from __future__ import annotations

import dataclasses
from typing import Dict


@dataclasses.dataclass(frozen=True)
class ChipFacts:
    """One TPU chip, as published.

    Attributes:
      name: the generation as topology names spell it ('v5e').
      hbm_bytes: HBM capacity in bytes.
      hbm_bandwidth: HBM bandwidth in bytes/s.
      bf16_peak_flops: dense bf16 peak in FLOP/s (float32 matmuls/convs run as bf16
        passes at XLA's default precision, so this is the peak for both dtypes).
    """

    name: str
    hbm_bytes: int
    hbm_bandwidth: float
    bf16_peak_flops: float

    @property
    def ridge_flops_per_byte(self) -> float:
        """Arithmetic intensity above which a step is compute-bound."""
        return self.bf16_peak_flops / self.hbm_bandwidth


CHIPS: Dict[str, ChipFacts] = {
    "v4": ChipFacts("v4", 32 * 2 ** 30, 1200e9, 275e12),
    "v5e": ChipFacts("v5e", 16 * 10 ** 9, 819e9, 197e12),
    "v5p": ChipFacts("v5p", 95 * 10 ** 9, 2765e9, 459e12),
    "v6e": ChipFacts("v6e", 32 * 10 ** 9, 1638e9, 918e12),
}


def chip_for_topology(topology: str) -> ChipFacts:
    """The chip of a topology name such as 'v5e:2x4' or 'v5p:2x2x1'.

    Raises:
      ValueError naming the topology when its generation is not in `CHIPS`.
    """
    generation = topology.split(":", 1)[0].strip().lower()
    if generation not in CHIPS:
        raise ValueError(f"unknown TPU generation {generation!r} in topology {topology!r}: "
                         f"expected one of {sorted(CHIPS)} (e.g. 'v5e:2x4')")
    return CHIPS[generation]
