"""Training augmentation on whole batches of tensors (CPU or GPU), per-image random.

Each function takes float images in [0, 1], shape (B, C, H, W), and a torch.Generator on the
images' device, and returns a batch of the same shape. They reproduce the notebooks'
torchvision transforms (applied there one PIL image at a time):
  crop_flip  RandomCrop(size, padding=4) + RandomHorizontalFlip   (CIFAR cell 4)
  rotate10   RandomRotation(10), nearest, fill 0
  flip       RandomHorizontalFlip
  flip_rotate_translate  RandomHorizontalFlip + RandomRotation(10) + RandomAffine(0,
             translate=(0.1, 0.1))                                (FMNIST cell 8)
  rotate_flip_jitter  RandomRotation(10) + RandomHorizontalFlip + ColorJitter(brightness=0.1,
             contrast=0.1)                                        (Blood, Tissue cell 5)
  pad_notebook  RandomHorizontalFlip + RandomRotation(10) + ColorJitter(0.2, 0.2, 0.2, 0.1) +
             RandomResizedCrop(size, scale=(0.8, 1.0))            (PAD cell 4)
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
    b = x.shape[0]
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device=x.device)
    return _window(x, padding, dy, dx)


def random_translate(x: torch.Tensor, gen: torch.Generator, fraction: float = 0.1) -> torch.Tensor:
    """RandomAffine(degrees=0, translate=(fraction, fraction)): each image shifted by
    round(U(-fraction·W, fraction·W)) columns and round(U(-fraction·H, fraction·H)) rows
    (torchvision's draw), zero fill."""
    b, _, h, w = x.shape
    tx = torch.round(_uniform(b, -fraction * w, fraction * w, gen, x.device)).long()
    ty = torch.round(_uniform(b, -fraction * h, fraction * h, gen, x.device)).long()
    pad = int(max(round(fraction * w), round(fraction * h)))
    return _window(x, pad, pad - ty, pad - tx)


def _window(x: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """The H×W window at (dy, dx) of each zero-padded image: a shift by (padding - dy, ...)."""
    b, _, h, w = x.shape
    padded = F.pad(x, (padding,) * 4)  # zero fill, as RandomCrop(padding=4)
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


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale=(0.8, 1.0),
                        ratio=(3 / 4, 4 / 3), tries: int = 10) -> torch.Tensor:
    """RandomResizedCrop(size, scale, ratio) to the images' own size: torchvision's box draw
    (up to 10 tries of area and log-ratio, else the centre crop), resized bilinearly."""
    b, _, h, w = x.shape
    dev = x.device
    area = _uniform(b * tries, *scale, gen, dev) * (h * w)
    log_r = _uniform(b * tries, math.log(ratio[0]), math.log(ratio[1]), gen, dev)
    cw = torch.round(torch.sqrt(area * torch.exp(log_r))).view(b, tries)
    ch = torch.round(torch.sqrt(area / torch.exp(log_r))).view(b, tries)
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.float().argmax(1)  # the first box that fits (0 when none does)
    pick = lambda t: t.gather(1, first[:, None])[:, 0]  # noqa: E731
    # No box fits in `tries`: the centre crop of the whole image (ratio within bounds here).
    cw = torch.where(ok.any(1), pick(cw), torch.full_like(cw[:, 0], w))
    ch = torch.where(ok.any(1), pick(ch), torch.full_like(ch[:, 0], h))
    top = torch.floor(torch.rand(b, generator=gen, device=dev) * (h - ch + 1))
    left = torch.floor(torch.rand(b, generator=gen, device=dev) * (w - cw + 1))
    # The box in affine_grid's coordinates (align_corners=False: the image spans [-1, 1]).
    cx, cy = (left + cw / 2) / w * 2 - 1, (top + ch / 2) / h * 2 - 1
    zero = torch.zeros_like(cx)
    theta = torch.stack([torch.stack([cw / w, zero, cx], 1), torch.stack([zero, ch / h, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W), the ITU-R 601 weights torchvision's rgb_to_grayscale uses."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB in [0, 1] -> HSV, hue in [0, 1) (torchvision's formulas, after PIL)."""
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    flat = maxc == minc  # grey: hue and saturation 0 (no division by zero)
    span = torch.where(flat, torch.ones_like(maxc), maxc - minc)
    s = (maxc - minc) / torch.where(flat, torch.ones_like(maxc), maxc)
    rc, gc, bc = (maxc - r) / span, (maxc - g) / span, (maxc - b) / span
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([(h / 6.0 + 1.0).remainder(1.0), s, maxc], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    h6 = h * 6.0
    i = torch.floor(h6)
    f = h6 - i
    i = i.long().remainder(6)[:, None]  # (B, 1, H, W) sector
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    vpqt = torch.stack([v, p, q, t], 1)  # (B, 4, H, W)
    # which of v, p, q, t each of r, g, b is, per sector 0..5
    select = torch.tensor([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]],
                          device=x.device)
    index = select[:, i[:, 0]].permute(1, 0, 2, 3)  # (B, 3, H, W)
    return vpqt.gather(1, index)


def color_jitter4(x: torch.Tensor, gen: torch.Generator, brightness: float = 0.2,
                  contrast: float = 0.2, saturation: float = 0.2, hue: float = 0.1) -> torch.Tensor:
    """ColorJitter(brightness, contrast, saturation, hue) on RGB images: per image, four
    factors and a random order of the four adjustments, each as torchvision's (blend with
    black, with the mean grey, with the grey image; a hue shift in HSV)."""
    b, dev = x.shape[0], x.device
    view = (b, 1, 1, 1)
    factors = [_uniform(b, 1 - brightness, 1 + brightness, gen, dev),
               _uniform(b, 1 - contrast, 1 + contrast, gen, dev),
               _uniform(b, 1 - saturation, 1 + saturation, gen, dev),
               _uniform(b, -hue, hue, gen, dev)]
    orders = torch.argsort(torch.rand(b, 4, generator=gen, device=dev), dim=1)  # (B, 4)
    f_b, f_c, f_s, f_h = (f.to(x.dtype).view(view) for f in factors)

    def blend(img, other, ratio):
        return (ratio * img + (1 - ratio) * other).clamp(0, 1)

    def hue_shift(img):
        h, s_, v = _rgb_to_hsv(img).unbind(1)
        return _hsv_to_rgb(torch.stack([(h + f_h[:, 0]).remainder(1.0), s_, v], 1))

    ops = (lambda t: blend(t, torch.zeros_like(t), f_b),
           lambda t: blend(t, _grey(t).mean(dim=(1, 2, 3), keepdim=True), f_c),
           lambda t: blend(t, _grey(t), f_s),
           hue_shift)
    for step in range(4):  # every image takes its own op at each step
        k = orders[:, step].view(view)
        x = torch.where(k == 0, ops[0](x), torch.where(k == 1, ops[1](x), torch.where(
            k == 2, ops[2](x), ops[3](x))))
    return x


def pad_notebook(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = random_rotation(hflip(x, gen), gen, 10.0)
    return random_resized_crop(color_jitter4(x, gen), gen)


def flip_rotate_translate(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    return random_translate(random_rotation(hflip(x, gen), gen, 10.0), gen)


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
                 "flip_rotate_translate": flip_rotate_translate,
                 "rotate_flip_jitter": rotate_flip_jitter, "pad_notebook": pad_notebook}
