"""configs/demo.py with the large-kernel block of examples/large_kernel_block.py (docs/extending.md).

    python train.py --config examples/large_kernel_config.py --workdir /tmp/large_kernel
"""

import examples.large_kernel_block  # noqa: F401  (importing it registers "nafblock_large_kernel")
from configs import demo


def get_config():
    config = demo.get_config()
    config.model.block = {"name": "nafblock_large_kernel", "kernel_size": 7}  # the one new line
    return config
