"""`python -m nafnet_jax.tools.bench` (the `nafnet-bench` console script)."""

import sys

from nafnet_jax.tools.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
