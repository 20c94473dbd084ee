"""`python -m nafnet_jax.ablation`: the ablation runner (`nafnet_jax.tools.ablation`), by its short name."""

from nafnet_jax.tools.ablation import main

if __name__ == "__main__":
    raise SystemExit(main())
