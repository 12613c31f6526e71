"""The conventional side of the speed benchmark: a Dataset that warps each image with PIL
and converts it with ToTensor, as a hand-made MNIST project serves it. ``search.bench.speed``
times a ``DataLoader`` over it against the engine, with the same model, step and batch.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from search.engine.train import Recipe

# The engine's default recipe: its augmentation is what both pipelines apply.
AUGMENTATION = Recipe()
# torchvision's RandomAffine default: the cheapest warp PIL has (the engine is bilinear).
CONVENTIONAL_RESAMPLE = Image.Resampling.NEAREST


class AffineMNIST(Dataset):
    """MNIST as a hand-made project serves it: one PIL affine warp and ToTensor per image.

    This is what ``torchvision.transforms.RandomAffine`` + ``ToTensor`` do to a PIL image,
    written out because torchvision is not importable next to this CPU torch. Normalise
    is left out on purpose: the models normalise inside ``forward``, for both pipelines.
    The random numbers come from torch's global generator, as torchvision's do, so each
    DataLoader worker draws its own.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, recipe: Recipe = AUGMENTATION
    ) -> None:
        self.images, self.labels = images, labels  # uint8 N x 28 x 28, int N
        self.rotate, self.translate, self.scale = recipe.rotate, recipe.translate, recipe.scale

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = Image.fromarray(self.images[index])  # mode "L", as torchvision's MNIST gives
        # One draw instead of torchvision's four: if anything, cheaper than the real thing.
        u = (torch.rand(4) * 2 - 1).tolist()
        shift = (u[1] * self.translate * image.width, u[2] * self.translate * image.height)
        image = pil_affine(image, u[0] * self.rotate, shift, 1 + u[3] * self.scale)
        return to_tensor(image), int(self.labels[index])


def pil_affine(
    image: Image.Image,
    angle: float,
    shift: tuple[float, float],
    zoom: float,
    resample: Image.Resampling = CONVENTIONAL_RESAMPLE,
) -> Image.Image:
    """torchvision's ``F.affine`` on a PIL image, without shear: rotate by ``angle`` degrees
    and zoom about the centre, then shift by ``shift`` pixels; outside reads as 0."""
    cx, cy = image.width * 0.5, image.height * 0.5
    tx, ty = shift
    cos, sin = math.cos(math.radians(angle)) / zoom, math.sin(math.radians(angle)) / zoom
    # PIL wants the inverse map, output -> input: undo the shift, then rotate/zoom back.
    a, b, d, e = cos, sin, -sin, cos
    c = cx - a * (cx + tx) - b * (cy + ty)
    f = cy - d * (cx + tx) - e * (cy + ty)
    return image.transform(
        image.size, Image.Transform.AFFINE, (a, b, c, d, e, f), resample=resample, fillcolor=0
    )


def to_tensor(image: Image.Image) -> torch.Tensor:
    """torchvision's ``ToTensor`` for a mode "L" image: 1 x H x W floats in [0, 1]."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).unsqueeze(0).float().div(255)
