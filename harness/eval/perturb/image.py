"""ImageNet-C image corruptions at severities 1-5 (Hendrycks & Dietterich, ICLR 2019), written with numpy,
scipy and PIL, deterministic from a seed.

The `imagecorruptions` package (1.1.2, the last release) does not run on this stack: it imports
`pkg_resources` (gone from setuptools 81+), calls `skimage.filters.gaussian(multichannel=...)` (a keyword
current scikit-image no longer takes) and needs opencv and scikit-image besides. So the corruptions that need
only array arithmetic, a blur or a re-encoding are written here with ImageNet-C's severity constants:

- noise: `gaussian_noise`, `shot_noise`, `impulse_noise`, `speckle_noise`;
- blur: `gaussian_blur`, `defocus_blur`, `zoom_blur` (the corruption Qiu et al. found hurts most);
- weather: `brightness`; digital: `contrast`, `saturate`, `jpeg_compression`, `pixelate`
  (`speckle_noise`, `gaussian_blur` and `saturate` are among ImageNet-C's extra corruptions).

Not provided (they need ImageMagick, frost photographs or elastic warps): motion_blur, glass_blur, snow,
frost, fog, spatter, elastic_transform. The constants are ImageNet-C's, stated for 224-pixel images; here they
apply to the image file at its own resolution, before the method's own resize and crop.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import hsv_to_rgb, rgb_to_hsv
from PIL import Image
from scipy import ndimage

from harness.eval.perturb.seeding import item_rng

Array = np.ndarray  # float (H, W, 3) in [0, 1]


def _gaussian_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    return x + rng.normal(size=x.shape, scale=c)


def _shot_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (60, 25, 12, 5, 3)[s - 1]
    return rng.poisson(x * c) / c


def _impulse_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (0.03, 0.06, 0.09, 0.17, 0.27)[s - 1]  # the fraction of values replaced by salt or pepper
    u = rng.random(x.shape)
    out = x.copy()
    out[u < c / 2] = 0.0
    out[(u >= c / 2) & (u < c)] = 1.0
    return out


def _speckle_noise(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (0.15, 0.2, 0.35, 0.45, 0.6)[s - 1]
    return x + x * rng.normal(size=x.shape, scale=c)


def _gaussian_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (1, 2, 3, 4, 6)[s - 1]
    return ndimage.gaussian_filter(x, sigma=(c, c, 0))


def _disk(radius: int, alias_blur: float) -> Array:
    size = np.arange(-max(8, radius), max(8, radius) + 1)
    yy, xx = np.meshgrid(size, size, indexing="ij")
    kernel = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    kernel /= kernel.sum()
    kernel = ndimage.gaussian_filter(kernel, sigma=alias_blur)
    return kernel / kernel.sum()


def _defocus_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    radius, alias = ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5))[s - 1]
    kernel = _disk(radius, alias)
    return np.stack([ndimage.convolve(x[..., ch], kernel, mode="reflect") for ch in range(3)], axis=-1)


def _zoom_centre(x: Array, factor: float) -> Array:
    """`x` enlarged by `factor` about its centre, cropped back to its size."""
    h, w = x.shape[:2]
    ch, cw = max(1, int(round(h / factor))), max(1, int(round(w / factor)))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[top:top + ch, left:left + cw]
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(crop[..., k], dtype=np.float32))
                         .resize((w, h), Image.BILINEAR)) for k in range(3)]
    return np.stack(planes, axis=-1)


def _zoom_blur(x: Array, s: int, rng: np.random.Generator) -> Array:
    zooms = (np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
             np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03))[s - 1]
    out = x.copy()
    for z in zooms:
        out += _zoom_centre(x, float(z))
    return out / (len(zooms) + 1)


def _hsv(x: Array, channel: int, scale: float, shift: float) -> Array:
    hsv = rgb_to_hsv(np.clip(x, 0, 1))
    hsv[..., channel] = np.clip(hsv[..., channel] * scale + shift, 0, 1)
    return hsv_to_rgb(hsv)


def _brightness(x: Array, s: int, rng: np.random.Generator) -> Array:
    return _hsv(x, 2, 1.0, (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1])


def _saturate(x: Array, s: int, rng: np.random.Generator) -> Array:
    scale, shift = ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2))[s - 1]
    return _hsv(x, 1, scale, shift)


def _contrast(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def _to_pil(x: Array) -> Image.Image:
    return Image.fromarray((np.clip(x, 0, 1) * 255).round().astype(np.uint8))


def _jpeg_compression(x: Array, s: int, rng: np.random.Generator) -> Array:
    buf = io.BytesIO()
    _to_pil(x).save(buf, "JPEG", quality=(25, 18, 15, 10, 7)[s - 1])
    buf.seek(0)
    with Image.open(buf) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0


def _pixelate(x: Array, s: int, rng: np.random.Generator) -> Array:
    c = (0.6, 0.5, 0.4, 0.3, 0.25)[s - 1]
    im = _to_pil(x)
    w, h = im.size
    small = im.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float64) / 255.0


IMAGE_CORRUPTIONS: dict[str, Callable[[Array, int, np.random.Generator], Array]] = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "speckle_noise": _speckle_noise, "gaussian_blur": _gaussian_blur, "defocus_blur": _defocus_blur,
    "zoom_blur": _zoom_blur, "brightness": _brightness, "contrast": _contrast, "saturate": _saturate,
    "jpeg_compression": _jpeg_compression, "pixelate": _pixelate,
}
# ImageNet-C's categories (speckle_noise, gaussian_blur and saturate are its four "extra" corruptions' three)
IMAGE_LEVELS = {"gaussian_noise": "noise", "shot_noise": "noise", "impulse_noise": "noise", "speckle_noise": "noise",
                "gaussian_blur": "blur", "defocus_blur": "blur", "zoom_blur": "blur", "brightness": "weather",
                "contrast": "digital", "saturate": "digital", "jpeg_compression": "digital", "pixelate": "digital"}


def corrupt(image: Image.Image, name: str, severity: int, rng: np.random.Generator) -> Image.Image:
    """An RGB image corrupted by `name` at `severity` (1-5), as an 8-bit RGB image of the same size."""
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    return _to_pil(IMAGE_CORRUPTIONS[name](x, int(severity), rng))


class CorruptedImages(Sequence):
    """Image files read as RGB, corrupted (image i by its own generator) and then preprocessed by the
    method's evaluation `transform`: `view[i:j]` is a (B, 3, H, W) tensor, as `PixelImages` gives."""

    def __init__(self, paths: Sequence[Path], transform: Callable[[Any], Any], name: str, severity: int,
                 seed: int, load: Callable[[Path], Image.Image]):
        self.paths, self.transform, self.load = list(paths), transform, load
        self.name, self.severity, self.seed = name, int(severity), int(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def item(self, i: int) -> Any:
        rng = item_rng(self.seed, self.name, self.severity, i)
        return self.transform(corrupt(self.load(self.paths[i]), self.name, self.severity, rng))

    def __getitem__(self, index: int | slice) -> Any:  # type: ignore[override]
        import torch

        if isinstance(index, slice):
            return torch.stack([self.item(i) for i in range(*index.indices(len(self)))])
        return self.item(index)
