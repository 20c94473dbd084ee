"""tfds builders, registered on import: gopro, sidd, reds, paired_folder, bundled."""

from nafnet_jax.data.builders.bundled import Bundled
from nafnet_jax.data.builders.gopro import Gopro
from nafnet_jax.data.builders.paired_folder import (PairedFolder, PairedFolderConfig,
                                                    paired_folder_config)
from nafnet_jax.data.builders.reds import Reds
from nafnet_jax.data.builders.sidd import Sidd

__all__ = ['Bundled', 'Gopro', 'PairedFolder', 'PairedFolderConfig', 'Reds', 'Sidd',
           'paired_folder_config']
