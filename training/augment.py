"""Batched augmentation and test-time augmentation written with torch ops (no torchvision).

All functions take uint8 or float tensors of 48x48 faces shaped (N, 1, 48, 48) and return float
crops (N, 1, S, S) already normalised, so one ``grid_sample`` call does resize, crop, rotation,
translation and flip for the whole batch.
"""

import dataclasses
import math

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class AugmentConfig:
    """Strength of each training augmentation (0 disables it)."""

    scale: tuple = (0.8, 1.2)  # zoom of the crop relative to the centre crop
    rotation_deg: float = 10.0
    translate: float = 0.1  # fraction of the crop side
    flip: float = 0.5
    erase: float = 0.5  # probability of one random erasing rectangle
    erase_area: tuple = (0.02, 0.2)
    noise_std: float = 0.02  # gaussian noise on the 0..1 scale
    brightness: float = 0.2  # +- additive on the 0..1 scale
    contrast: float = 0.2  # multiplicative +- around the image mean


def normalize(images, mean, std):
    """uint8 or 0..255 float tensor -> (x / 255 - mean) / std."""
    return (images.float() / 255.0 - mean) / std


def center_crop(images, size):
    """Central size x size window of (N, C, H, W)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def augment_batch(images, out_size, mean, std, cfg=None, generator=None):
    """Random affine (scale, rotation, translation, flip) crop, photometric jitter, noise, erasing.

    Args:
        images: (N, 1, H, W) uint8 faces.
        out_size: side of the output crop; with no zoom the crop is the centre out_size window.
        mean, std: normalisation.
        cfg: AugmentConfig.
        generator: torch.Generator for reproducibility.

    Returns:
        (N, 1, out_size, out_size) float32 normalised crops.
    """
    cfg = cfg or AugmentConfig()
    n, _, h, w = images.shape
    dev = images.device

    def uniform(lo, hi, size=(n,)):
        return torch.rand(size, generator=generator, device=dev) * (hi - lo) + lo

    x = images.float() / 255.0
    # Affine in normalised coordinates of the input: the output grid covers out_size/h of the input.
    zoom = uniform(*cfg.scale) if cfg.scale else torch.ones(n, device=dev)
    angle = uniform(-cfg.rotation_deg, cfg.rotation_deg) * (math.pi / 180.0)
    shift = uniform(-cfg.translate, cfg.translate, (n, 2)) * 2 * (out_size / h)
    flip = torch.where(torch.rand(n, generator=generator, device=dev) < cfg.flip, -1.0, 1.0)
    extent = (out_size / h) / zoom
    cos, sin = torch.cos(angle) * extent, torch.sin(angle) * extent
    theta = torch.stack([
        torch.stack([cos * flip, -sin, shift[:, 0]], 1),
        torch.stack([sin * flip, cos, shift[:, 1]], 1),
    ], 1)
    grid = F.affine_grid(theta, (n, 1, out_size, out_size), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if cfg.contrast or cfg.brightness:
        mean_px = x.mean(dim=(1, 2, 3), keepdim=True)
        c = uniform(1 - cfg.contrast, 1 + cfg.contrast).view(n, 1, 1, 1)
        b = uniform(-cfg.brightness, cfg.brightness).view(n, 1, 1, 1)
        x = ((x - mean_px) * c + mean_px + b).clamp(0, 1)
    if cfg.noise_std:
        x = (x + torch.randn(x.shape, generator=generator, device=dev) * cfg.noise_std).clamp(0, 1)
    x = (x - mean) / std
    if cfg.erase:
        x = random_erase(x, cfg.erase, cfg.erase_area, generator)
    return x


def random_erase(x, prob, area, generator=None):
    """Replace one random rectangle per chosen sample with gaussian noise (vectorised)."""
    n, _, h, w = x.shape
    dev = x.device
    chosen = torch.rand(n, generator=generator, device=dev) < prob
    frac = torch.rand(n, generator=generator, device=dev) * (area[1] - area[0]) + area[0]
    aspect = torch.exp(torch.rand(n, generator=generator, device=dev) * (2 * math.log(3)) - math.log(3))
    eh = (torch.sqrt(frac * aspect) * h).clamp(1, h).long()
    ew = (torch.sqrt(frac / aspect) * w).clamp(1, w).long()
    top = (torch.rand(n, generator=generator, device=dev) * (h - eh + 1)).long()
    left = (torch.rand(n, generator=generator, device=dev) * (w - ew + 1)).long()
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    mask = ((rows >= top.view(n, 1, 1)) & (rows < (top + eh).view(n, 1, 1))
            & (cols >= left.view(n, 1, 1)) & (cols < (left + ew).view(n, 1, 1)) & chosen.view(n, 1, 1))
    noise = torch.randn(x.shape, generator=generator, device=dev)
    return torch.where(mask.unsqueeze(1), noise, x)


def tta_views(images, out_size, mean, std, mode="none"):
    """Test-time views of a batch of 48x48 faces.

    Args:
        images: (N, 1, H, W) uint8.
        mode: ``none`` (centre crop), ``flip`` (centre crop and its mirror) or ``tencrop``
            (4 corners + centre, each with its mirror).

    Returns:
        (V, N, 1, S, S) float normalised views; average the model's logits over V.
    """
    x = normalize(images, mean, std)
    h, w = x.shape[-2:]
    if mode == "none":
        return center_crop(x, out_size).unsqueeze(0)
    if mode == "flip":
        c = center_crop(x, out_size)
        return torch.stack([c, c.flip(-1)])
    if mode == "tencrop":
        s = out_size
        crops = [x[..., :s, :s], x[..., :s, w - s:], x[..., h - s:, :s], x[..., h - s:, w - s:],
                 center_crop(x, s)]
        return torch.stack(crops + [c.flip(-1) for c in crops])
    raise ValueError(f"unknown TTA mode {mode!r}: choose none, flip or tencrop")
