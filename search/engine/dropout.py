"""Element dropout that draws a few random numbers per dropped activation, not one per value.

``nn.Dropout`` on a CPU draws a Bernoulli number for every activation (``bernoulli_``):
about 50 ReLUs' worth of time per element, a sixth of a training step for the shipped 8k
net, whose rate is 0.0036. At the rates the search uses (at most 0.1), almost every draw
says "keep". The dropped positions of n independent Bernoulli(p) draws are the running
sums of independent geometric gaps, so about n * p geometric draws give masks with exactly
the distribution of ``nn.Dropout``'s. The values are what ``nn.Dropout`` computes: the
kept ones scaled by 1 / (1 - p), forward and backward.

Only the training engine uses this, and only on the CPU (a CUDA dropout kernel is already
fast, and counting the draws would stall the GPU). Exported modules keep ``nn.Dropout``,
which is the identity in eval mode.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MAX_RATE = 0.2  # above it, drawing the gaps saves too little: nn.Dropout's own path is used


def dropped_positions(
    count: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sorted int64 positions in [0, count) where independent Bernoulli(p) draws come up 1."""
    expected = count * p
    chunk = int(expected + 6 * expected**0.5) + 16  # enough gaps in one draw, nearly always
    log_keep = math.log1p(-p)
    parts, last = [], -1.0
    while last < count - 1:
        # The trials to the first success, by inversion: ceil(log(U) / log(1 - p)) for U
        # uniform in (0, 1] is Geometric(p). Vectorised, it is ~4x faster than
        # ``geometric_``, which on a CPU draws one value at a time. float64 holds every
        # position exactly.
        uniform = torch.rand(chunk, dtype=torch.float64, generator=generator)
        gaps = uniform.neg_().log1p_().div_(log_keep).ceil_().clamp_(min=1)
        positions = gaps.cumsum_(0).add_(last)
        parts.append(positions)
        last = positions[-1].item()
    positions = torch.cat(parts) if len(parts) > 1 else parts[0]
    # Sorted, so the positions inside the range are a prefix: no boolean mask needed.
    inside = int(torch.searchsorted(positions, float(count)))
    return positions[:inside].long()


class _SparseDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:  # type: ignore[override]
        if not _is_dense(x):
            x = x.contiguous()
        scale = 1.0 / (1.0 - p)
        out = torch.mul(x, scale, out=torch.empty_like(x))  # empty_like keeps x's layout
        dropped = dropped_positions(out.numel(), p)
        # Masks are independent per value, so positions may index memory order directly.
        _flat(out).index_fill_(0, dropped, 0.0)
        ctx.save_for_backward(dropped)
        ctx.scale = scale
        # The gradient must share the output's layout for the positions to mean the same values.
        ctx.layout = torch.contiguous_format if out.is_contiguous() else torch.channels_last
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (dropped,) = ctx.saved_tensors
        grad_in = torch.mul(grad, ctx.scale, out=torch.empty_like(grad, memory_format=ctx.layout))
        _flat(grad_in).index_fill_(0, dropped, 0.0)
        return grad_in, None


class SparseDropout(nn.Dropout):
    """``nn.Dropout`` with cheap masks on the CPU; the same maths and the same mask distribution."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if x.device.type != "cpu" or self.p > MAX_RATE or self.inplace:
            return super().forward(x)
        return _SparseDropout.apply(x, self.p)


def _is_dense(x: torch.Tensor) -> bool:
    return x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)


def _flat(x: torch.Tensor) -> torch.Tensor:
    # Every value of a dense tensor, in memory order, as a 1-D view.
    return x.as_strided((x.numel(),), (1,), x.storage_offset())
