"""Batched random affine augmentation that runs where the batch lives.

One `affine_grid` + `grid_sample` call warps the whole batch, each image with its
own rotation, scale and shift, so augmentation costs a couple of kernels per
step instead of a Python loop over images.
"""

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    generator: torch.Generator,
    rotate: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
) -> torch.Tensor:
    """Warp each image of a float N x C x H x W batch by its own random affine map.

    Per image: rotation uniform in +-`rotate` degrees, zoom uniform in 1 +- `scale`
    and shift uniform in +-`translate` of the image size on each axis. Pixels
    from outside the image read as 0 (background). With all three at 0 the batch
    is returned as is and `generator` is not touched, so "off" costs nothing.

    The random numbers are drawn on the generator's device, so a CPU generator
    gives the same maps whether the batch is on the CPU or a GPU.
    """
    if rotate == translate == scale == 0:
        return images
    u = torch.rand(len(images), 4, generator=generator, device=generator.device)
    u = (u * 2 - 1).to(images.device)  # uniform in [-1, 1)
    angle = u[:, 0] * math.radians(rotate)
    zoom = 1 + u[:, 1] * scale
    # theta maps output to input coordinates, which span [-1, 1]: 2 units per image.
    shift_x, shift_y = u[:, 2] * 2 * translate, u[:, 3] * 2 * translate
    cos, sin = angle.cos() / zoom, angle.sin() / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], dim=1), torch.stack([sin, cos, shift_y], dim=1)], dim=1
    )
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
