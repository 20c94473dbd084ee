"""Small fake datasets in the real on-disk layouts, for tests and smoke runs.

Images are 'coordinate-encoded': gt[y, x] = (y, x, tag) (mod 256), so any crop or flip of it can be
traced back to its window, and lq = 255 - gt, so a pair's alignment is checkable pixel by pixel.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image


def coordinate_image(height: int, width: int, tag: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): channel 0 = row, 1 = column (mod 256), 2 = `tag`."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y % 256, x % 256, np.full_like(y, tag % 256)], -1).astype(np.uint8)


def write_image(path: str | os.PathLike, image: np.ndarray, **save_kwargs) -> str:
    """Writes `image` (format from the extension), creating folders; returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path, **save_kwargs)
    return path


def textured_image(height: int, width: int, tag: int = 0) -> np.ndarray:
    """uint8 (H, W, 3): channels 0-1 random (seeded by `tag`), 2 = `tag`.

    Unlike coordinate_image (periodic every 256 px), every window of it differs from the others,
    so a window's position can be checked in frames wider or taller than 256 px.
    """
    image = np.random.default_rng(tag).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[..., 2] = tag % 256
    return image


_PATTERNS = {'coordinates': coordinate_image, 'textured': textured_image}


def write_pair(lq_path, gt_path, height: int, width: int, tag: int,
               pattern: str = 'coordinates') -> np.ndarray:
    """Writes gt = coordinate_image(tag) (or textured_image) and lq = 255 - gt; returns gt."""
    gt = _PATTERNS[pattern](height, width, tag)
    write_image(gt_path, gt)
    write_image(lq_path, 255 - gt)
    return gt


def write_paired_folder(root, num: int = 4, height: int = 12, width: int = 16,
                        lq_name: str = 'lq', gt_name: str = 'gt') -> tuple[str, str]:
    """root/{lq,gt}/img_<i>.png pairs, image i tagged i; returns (lq_dir, gt_dir)."""
    lq_dir, gt_dir = os.path.join(root, lq_name), os.path.join(root, gt_name)
    for i in range(num):
        name = f'img_{i:03d}.png'
        write_pair(os.path.join(lq_dir, name), os.path.join(gt_dir, name), height, width, i)
    return lq_dir, gt_dir


def write_gopro_tree(root, layout: str = 'scenes', frames: int = 2, height: int = 12,
                     width: int = 16, pattern: str = 'coordinates') -> str:
    """GOPRO_Large: root/GOPRO_Large/{train,test}/<scene>/{blur,sharp,blur_gamma}/<frame>.png
    (two scenes in train, one in test); layout='flat': root/{train,test}/{input,target}/*.png.
    pattern: 'coordinates' or 'textured' frames (see write_pair). Returns the manual_dir (root).
    """
    tag = 0
    scenes = {'train': ['GOPR0001_01_00', 'GOPR0002_02_00'], 'test': ['GOPR0003_03_00']}
    for split, names in scenes.items():
        for scene in names:
            for f in range(frames):
                frame = f'{f + 1:06d}.png'
                if layout == 'flat':
                    base = os.path.join(root, split)
                    write_pair(os.path.join(base, 'input', f'{scene}-{frame}'),
                               os.path.join(base, 'target', f'{scene}-{frame}'), height, width, tag,
                               pattern)
                else:
                    base = os.path.join(root, 'GOPRO_Large', split, scene)
                    gt = write_pair(os.path.join(base, 'blur', frame),
                                    os.path.join(base, 'sharp', frame), height, width, tag, pattern)
                    write_image(os.path.join(base, 'blur_gamma', frame), gt)  # not used
                tag += 1
    return os.fspath(root)


def write_mat_v5(path, name: str, array: np.ndarray) -> str:
    """An old-style MATLAB .mat file (scipy.io.savemat) holding `array` as variable `name`."""
    import scipy.io
    os.makedirs(os.path.dirname(os.fspath(path)), exist_ok=True)
    scipy.io.savemat(os.fspath(path), {name: array})
    return os.fspath(path)


def write_mat_v73(path, name: str, array: np.ndarray) -> str:
    """A MATLAB v7.3 .mat file: HDF5 behind MATLAB's 512-byte header, dimensions reversed
    (column-major), as MATLAB's `save -v7.3` writes it.
    """
    import h5py
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, 'w', userblock_size=512) as f:
        dset = f.create_dataset(name, data=np.ascontiguousarray(array.transpose(
            tuple(reversed(range(array.ndim))))))
        dset.attrs['MATLAB_class'] = np.bytes_('uint8')
    text = (b'MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 '
            b'HDF5 schema 1.00 .')
    header = text.ljust(116, b' ') + b'\x00' * 8 + b'\x00\x02' + b'IM'
    with open(path, 'r+b') as f:
        f.write(header.ljust(512, b'\x00'))
    return path


def sidd_blocks(images: int = 2, blocks: int = 3, size: int = 8, offset: int = 0) -> np.ndarray:
    """uint8 (images, blocks, size, size, 3) whose block (i, j) is tagged i * blocks + j."""
    out = np.zeros((images, blocks, size, size, 3), np.uint8)
    for i in range(images):
        for j in range(blocks):
            out[i, j] = coordinate_image(size, size, offset + i * blocks + j)
    return out


def write_sidd_tree(root, mat_format: str = 'v5', height: int = 12, width: int = 16,
                    pattern: str = 'coordinates') -> str:
    """root/SIDD_Medium_Srgb/Data/<scene>/<id>_{NOISY,GT}_SRGB_01{0,1}.PNG (two scenes) and
    root/Validation{Noisy,Gt}BlocksSrgb.mat (2 images x 3 blocks of 8x8; noisy = 255 - gt) in
    `mat_format` 'v5' or 'v7.3'. Returns the manual_dir (root).
    """
    tag = 0
    for scene in ('0001_001_S6_00100_00060_3200_L', '0002_001_S6_00100_00020_3200_N'):
        for shot in ('010', '011'):
            base = os.path.join(root, 'SIDD_Medium_Srgb', 'Data', scene)
            sid = scene[:4]
            write_pair(os.path.join(base, f'{sid}_NOISY_SRGB_{shot}.PNG'),
                       os.path.join(base, f'{sid}_GT_SRGB_{shot}.PNG'), height, width, tag,
                       pattern)
            tag += 1
    gt = sidd_blocks()
    write = write_mat_v5 if mat_format == 'v5' else write_mat_v73
    write(os.path.join(root, 'ValidationGtBlocksSrgb.mat'), 'ValidationGtBlocksSrgb', gt)
    write(os.path.join(root, 'ValidationNoisyBlocksSrgb.mat'), 'ValidationNoisyBlocksSrgb',
          255 - gt)
    return os.fspath(root)


def write_reds_tree(root, videos: int = 2, frames: int = 12, height: int = 12,
                    width: int = 16) -> str:
    """root/{train,val}/{train,val}_blur_jpeg/<vid>/<frame>.jpg and *_sharp/<vid>/<frame>.png.

    Blurred frames are JPEG (quality 90) of lq = 255 - gt. Returns the manual_dir (root).
    """
    tag = 0
    for parent, prefix in (('train', 'train'), ('val', 'val')):
        for v in range(videos):
            for f in range(frames):
                gt = coordinate_image(height, width, tag)
                name = f'{v:03d}/{f:08d}'
                write_image(os.path.join(root, parent, f'{prefix}_sharp', name + '.png'), gt)
                write_image(os.path.join(root, parent, f'{prefix}_blur_jpeg', name + '.jpg'),
                            255 - gt, quality=90)
                tag += 1
    return os.fspath(root)


def stereo_views(height: int, width: int, tag: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (H, W, 3) left and right views that differ: coordinate images tagged `tag` (left)
    and `tag + 128` (right), so channel 2 says which view (and pair) a pixel came from."""
    return coordinate_image(height, width, tag), coordinate_image(height, width, tag + 128)


def write_stereo_tree(root, scales: tuple[int, ...] = (2, 4), patches: int = 3,
                      lr_size: tuple[int, int] = (6, 10), test_scenes: int = 2,
                      test_lr_size: tuple[int, int] = (5, 7)) -> str:
    """The original's StereoSR layout (NAFNET.md 2.3) under root; returns the manual_dir (root).

    patches_x{s}/<id>/{hr0,hr1,lr0,lr1}.png for each scale: hr = stereo_views at s x lr_size,
    pair i tagged i; lr = the hr views' top-left pixel of every s x s block (so lq[y, x] ==
    gt[s*y, s*x], checkable after any paired crop). test/<Set>/hr/<scene>/{hr0,hr1}.png with
    test/<Set>/lr_x{s}/<scene>/{lr0,lr1}.png: one hr of max(scales) x test_lr_size per scene, lr
    made from it the same way at each scale.
    """
    from nafnet_jax.data.builders.stereo import TEST_SETS
    root = os.fspath(root)

    def write_views(folder, prefix, views):
        for i, view in enumerate(views):
            write_image(os.path.join(folder, f'{prefix}{i}.png'), view)

    for s in scales:
        h, w = lr_size
        for i in range(patches):
            hr = stereo_views(s * h, s * w, i)
            folder = os.path.join(root, f'patches_x{s}', f'{i + 1:06d}')
            write_views(folder, 'hr', hr)
            write_views(folder, 'lr', [v[::s, ::s] for v in hr])
    for t, test_set in enumerate(TEST_SETS):
        for j in range(test_scenes):
            h, w = test_lr_size
            scene = f'scene_{j:03d}'
            # One hr for every scale, as the original's test sets: lr_x{s} is hr / s.
            hr = stereo_views(max(scales) * h, max(scales) * w, 10 * t + j)
            write_views(os.path.join(root, 'test', test_set, 'hr', scene), 'hr', hr)
            for s in scales:
                write_views(os.path.join(root, 'test', test_set, f'lr_x{s}', scene), 'lr',
                            [v[::s, ::s] for v in hr])
    return root


def write_stereo_folder(root, num: int = 3, height: int = 12, width: int = 20,
                        layout: str = 'scenes') -> str:
    """HR stereo pairs for data.dataset='stereo_folder': layout 'scenes' writes
    root/pair_<i>/{hr0,hr1}.png, 'flat' writes root/pair_<i>_{L,R}.png; pair i tagged i
    (stereo_views). Returns root."""
    root = os.fspath(root)
    for i in range(num):
        left, right = stereo_views(height, width, i)
        if layout == 'scenes':
            write_image(os.path.join(root, f'pair_{i}', 'hr0.png'), left)
            write_image(os.path.join(root, f'pair_{i}', 'hr1.png'), right)
        elif layout == 'flat':
            write_image(os.path.join(root, f'pair_{i}_L.png'), left)
            write_image(os.path.join(root, f'pair_{i}_R.png'), right)
        else:
            raise ValueError(f"layout must be 'scenes' or 'flat', got {layout!r}")
    return root
