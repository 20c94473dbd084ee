"""The paper's ablation ladder (Tables 1-2): PlainNet -> Baseline -> NAFNet, width 32, 200k iterations.

Select the rung and dataset with the config string, e.g.

    python train.py --config configs/ablation.py:plainnet+ln,gopro --workdir ...

Rungs (each changes one thing; models/blocks.py ABLATION_LADDER): plainnet, plainnet+ln,
plainnet+ln+gelu, baseline (+ channel attention), baseline+simple_gate, nafnet (CA -> SCA).
Datasets: gopro, sidd (the width-32 published bodies and recipes: NAFNet-GoPro-width32 /
NAFNet-SIDD-width32 in models/registry.py, with the rung's block), and demo: the README
demo's scale (bundled photographs, synthetic noise, the width-16 demo body, 64x64 crops),
which trains on a laptop CPU; its numbers are not the paper's.
`python -m nafnet_jax.tools.ablation` trains every rung and writes one table.
"""

from nafnet_jax.config import base_config, model_config_for
from nafnet_jax.models.blocks import ABLATION_LADDER

# dataset -> the named architecture whose U-Net body the rungs' blocks are put in.
BODIES = {"gopro": "NAFNet-GoPro-width32", "sidd": "NAFNet-SIDD-width32", "demo": "NAFNet-demo-width16"}


def get_config(config_string: str = "nafnet,sidd"):
    rung, _, dataset = config_string.partition(",")
    dataset = dataset or "sidd"
    if rung not in ABLATION_LADDER:
        raise ValueError(f"configs/ablation.py: unknown ablation rung {rung!r}; "
                         f"choose one of {sorted(ABLATION_LADDER)}")
    if dataset not in BODIES:
        raise ValueError(f"configs/ablation.py: unknown ablation dataset {dataset!r}; "
                         f"choose one of {sorted(BODIES)}")
    block = ABLATION_LADDER[rung]
    config = base_config()
    config.seed = 42
    config.model = model_config_for(BODIES[dataset], block=block)
    # The paper trains PlainNet without normalisation at a 10x lower learning rate (it diverges at 1e-3).
    config.optimizer.lr = 1e-4 if not block.norm else 1e-3
    config.optimizer.weight_decay = 0.0
    if dataset == "demo":
        return _demo_scale(config)
    config.data.dataset = dataset
    config.data.crop_size = 256
    config.data.use_flip = config.data.use_rot = dataset == "gopro"
    config.data.eval_split = "test" if dataset == "gopro" else "validation"
    config.eval.protocol = "uint8" if dataset == "gopro" else "float"
    config.train.total_steps = 200_000
    config.train.batch_size = 32
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 5000
    return config


def _demo_scale(config):
    """configs/demo.py's data and size: a CPU-sized ladder on the bundled photographs."""
    config.data.dataset = "bundled"
    config.data.crop_size = 64
    config.data.use_flip = True
    config.data.use_rot = True
    config.data.crops_per_image = 4
    config.data.degradation = {"noise": {"sigma": 25.0}}   # sigma in 0-255 units
    config.eval.protocol = "float"
    config.train.total_steps = 300
    config.train.batch_size = 8
    config.train.log_every = 50
    config.train.eval_every = 300        # one validation, at the end
    config.train.eval_at_steps = ()
    config.train.checkpoint_every = 300
    config.train.keep_checkpoints = 1
    return config
