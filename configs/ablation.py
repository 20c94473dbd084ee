"""The paper's ablation ladder (Tables 1-2): PlainNet -> Baseline -> NAFNet, width 32, 200k iterations.

Select the rung and dataset with the config string, e.g.

    python train.py --config configs/ablation.py:plainnet+ln,gopro --workdir ...

Rungs (each changes one thing): plainnet, plainnet+ln, plainnet+ln+gelu, baseline (+ channel attention),
baseline+simple_gate, nafnet (CA -> SCA). Datasets: gopro, sidd (their published recipes' data and
schedule, at width 32).
"""

from nafnet_jax.config import base_config, model_config
from nafnet_jax.models.blocks import ABLATION_LADDER

_ARCH = {  # the published width-32 architectures
    "gopro": dict(enc_blk_nums=(1, 1, 1, 28), middle_blk_num=1, dec_blk_nums=(1, 1, 1, 1),
                  tlc_train_size=(256, 256)),
    "sidd": dict(enc_blk_nums=(2, 2, 4, 8), middle_blk_num=12, dec_blk_nums=(2, 2, 2, 2),
                 tlc_train_size=None),
}


def get_config(config_string: str = "nafnet,sidd"):
    rung, _, dataset = config_string.partition(",")
    dataset = dataset or "sidd"
    if rung not in ABLATION_LADDER:
        raise ValueError(f"unknown ablation rung {rung!r}; choose one of {sorted(ABLATION_LADDER)}")
    if dataset not in _ARCH:
        raise ValueError(f"unknown ablation dataset {dataset!r}; choose one of {sorted(_ARCH)}")
    block = ABLATION_LADDER[rung]
    config = base_config()
    config.seed = 42
    config.model = model_config(width=32, activation=block.activation, attention=block.attention,
                                norm=block.norm, dw_expand=block.dw_expand, ffn_expand=block.ffn_expand,
                                **_ARCH[dataset])
    config.data.dataset = dataset
    config.data.crop_size = 256
    config.data.use_flip = config.data.use_rot = dataset == "gopro"
    config.data.eval_split = "test" if dataset == "gopro" else "validation"
    config.eval.protocol = "uint8" if dataset == "gopro" else "float"
    # The paper trains PlainNet without normalisation at a 10x lower learning rate (it diverges at 1e-3).
    config.optimizer.lr = 1e-4 if not block.norm else 1e-3
    config.optimizer.weight_decay = 0.0
    config.train.total_steps = 200_000
    config.train.batch_size = 32
    config.train.eval_every = 20_000
    config.train.checkpoint_every = 5000
    return config
