"""`python -m nafnet_jax.export ...`: the model exporter (nafnet_jax.tools.export; console script nafnet-export)."""

import sys

from nafnet_jax.tools.export import main

if __name__ == "__main__":
    sys.exit(main())
