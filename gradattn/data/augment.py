"""Training augmentation on whole batches of tensors (CPU or GPU), per-image random.

Each function takes float images in [0, 1], shape (B, C, H, W), and a torch.Generator on the
images' device, and returns a batch of the same shape. They reproduce the notebooks'
torchvision transforms (applied there one PIL image at a time):
  crop_flip  RandomCrop(size, padding=4) + RandomHorizontalFlip   (CIFAR-10 and friends)
  rotate10   RandomRotation(10), nearest, fill 0                  (Fashion-MNIST)
  flip       RandomHorizontalFlip
  rotate_flip_jitter  RandomRotation(10) + RandomHorizontalFlip + ColorJitter(brightness=0.1,
             contrast=0.1)                                        (the MedMNIST notebooks)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def hflip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_crop(x: torch.Tensor, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # zero fill, as RandomCrop(padding=4)
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]  # (B, C, H, W)


def random_rotation(x: torch.Tensor, gen: torch.Generator, degrees: float = 10.0) -> torch.Tensor:
    angle = _uniform(x.shape[0], -degrees, degrees, gen, x.device) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return hflip(random_crop(x, gen), gen)


def rotate10(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_rotation(x, gen, 10.0)


def color_jitter(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.1,
                 contrast: float = 0.1) -> torch.Tensor:
    """ColorJitter(brightness, contrast): per-image factors, the two applied in random order."""
    b = x.shape[0]
    f_b = _uniform(b, 1 - brightness, 1 + brightness, gen, x.device).to(x.dtype).view(b, 1, 1, 1)
    f_c = _uniform(b, 1 - contrast, 1 + contrast, gen, x.device).to(x.dtype).view(b, 1, 1, 1)
    brightness_first = (torch.rand(b, generator=gen, device=x.device) < 0.5).view(b, 1, 1, 1)

    def bright(t: torch.Tensor) -> torch.Tensor:
        return (t * f_b).clamp(0, 1)

    def contr(t: torch.Tensor) -> torch.Tensor:
        # blend with the mean grey level, as torchvision's adjust_contrast
        if t.shape[1] == 1:
            grey = t
        else:
            grey = (0.2989 * t[:, 0] + 0.587 * t[:, 1] + 0.114 * t[:, 2])[:, None]
        mean = grey.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return (f_c * t + (1 - f_c) * mean).clamp(0, 1)

    return torch.where(brightness_first, contr(bright(x)), bright(contr(x)))


def rotate_flip_jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return color_jitter(hflip(random_rotation(x, gen, 10.0), gen), gen)


def identity(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return x


AUGMENTATIONS = {"none": identity, "flip": hflip, "crop_flip": crop_flip, "rotate10": rotate10,
                 "rotate_flip_jitter": rotate_flip_jitter}
