"""tfds builders, registered on import: gopro, sidd, reds, paired_folder, bundled, stereo,
stereo_bundled."""

from nafnet_jax.data.builders.bundled import Bundled
from nafnet_jax.data.builders.gopro import Gopro
from nafnet_jax.data.builders.paired_folder import (PairedFolder, PairedFolderConfig,
                                                    paired_folder_config)
from nafnet_jax.data.builders.reds import Reds
from nafnet_jax.data.builders.sidd import Sidd
from nafnet_jax.data.builders.stereo import Stereo, StereoBundled

__all__ = ['Bundled', 'Gopro', 'PairedFolder', 'PairedFolderConfig', 'Reds', 'Sidd',
           'Stereo', 'StereoBundled', 'paired_folder_config']
