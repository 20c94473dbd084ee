"""The built-in demo dataset: colour photographs that scikit-image ships (no download).

Clean images only: lq is stored equal to gt, and the pipeline makes lq with a synthetic
degradation (data.degradation). Images are downscaled (Lanczos) to at most 512 px on the long side
so that the demo trains fast. Checked offline with scikit-image 0.26: the functions below load
without `pooch`; brain, cells3d, eagle, kidney, lily, skin, ... need a download and are not used;
camera, moon, coins, ... are grayscale; logo is RGBA artwork and colorwheel synthetic.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from nafnet_jax.data.builders.common import PairedImageBuilder
from nafnet_jax.data.images import encode_png

MAX_SIDE = 512
# name -> (skimage.data function, index into its result for functions returning a tuple)
TRAIN_IMAGES = {
    'astronaut': ('astronaut', None),
    'hubble_deep_field': ('hubble_deep_field', None),
    'immunohistochemistry': ('immunohistochemistry', None),
    'retina': ('retina', None),
    'rocket': ('rocket', None),
    'stereo_motorcycle_left': ('stereo_motorcycle', 0),
    'stereo_motorcycle_right': ('stereo_motorcycle', 1),
}
VALIDATION_IMAGES = {  # held out from training
    'chelsea': ('chelsea', None),
    'coffee': ('coffee', None),
}


def load_image(function: str, index: int | None) -> np.ndarray:
    """uint8 (H, W, 3) photograph from skimage.data, long side downscaled to <= MAX_SIDE."""
    import skimage.data
    image = getattr(skimage.data, function)()
    if index is not None:
        image = image[index]
    height, width = image.shape[:2]
    scale = MAX_SIDE / max(height, width)
    if scale < 1:
        size = (round(width * scale), round(height * scale))
        image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))
    return np.ascontiguousarray(image[..., :3].astype(np.uint8))


class Bundled(PairedImageBuilder):
    """scikit-image's colour photographs: 7 for training, 2 held out for validation."""

    DESCRIPTION = ('Offline demo data: scikit-image colour photographs (<= 512 px), lq == gt; '
                   'degrade gt on the fly (data.degradation).')
    HOMEPAGE = 'https://scikit-image.org/docs/stable/api/skimage.data.html'

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {'train': self._bundled_examples(TRAIN_IMAGES),
                'validation': self._bundled_examples(VALIDATION_IMAGES)}

    def _bundled_examples(self, images: dict):
        for key, (name, (function, index)) in enumerate(sorted(images.items())):
            png = encode_png(load_image(function, index))
            yield key, {'lq': png, 'gt': png, 'name': name}
