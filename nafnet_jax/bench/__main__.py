"""`python -m nafnet_jax.bench` (the `nafnet-bench` console script)."""

import sys

from nafnet_jax.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
