"""BatchNorm for channels_last activations of few channels, computed over a wide view.

The searched nets run 4 to 28 channels. In channels_last memory an activation is a
matrix of pixels x channels, and PyTorch's CPU BatchNorm walks it a few channels per
row: unless the channels fill its vectors (16 or more, a multiple of 8), it took a third
of the fast step on these nets, its backward 2 ms for a 620k-value activation that a
core reads in a tenth of that. Viewed as rows of (batch x height) by columns of
(width x channels), the same memory is a wide matrix whose column sums are one
vectorised pass, and the per-channel statistics are sums over the width of those.
The maths is BatchNorm's: batch mean and biased variance normalise, the running
statistics move by ``momentum`` with the unbiased variance, and the gradients are
BatchNorm's. The sums even round less than the native channels_last kernel's.

Only the training engine uses this, on the CPU, while it trains; exported modules
keep ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import functools

import torch
from torch import nn

# The native channels_last kernel runs along the channels in vectors of floats. From 16
# channels up, in multiples of 8, its vectors are full and its fewer passes beat the wide
# view; with 4, 5, 8, 10 or 14 channels it is slower than the wide view, up to 7x
# (`budgetnas bench --step` times both, docs/speed.md).
NATIVE_MIN_CHANNELS, NATIVE_MULTIPLE = 16, 8


def _wide(x: torch.Tensor) -> torch.Tensor:
    # N x C x H x W in channels_last memory -> (N*H) x (W*C), the same memory.
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h, w * c)


@functools.cache
def _channel_of_column(width: int, channels: int) -> torch.Tensor:
    # Column j of the wide view holds channel j % C. Indexing per-channel vectors with this
    # spreads them over the columns; it is cached per shape because a step's dozens of
    # small operations cost more in dispatch than in arithmetic (``repeat`` took 12 us).
    return torch.arange(width * channels) % channels


def _columns(width: int, *per_channel: torch.Tensor) -> list[torch.Tensor]:
    # Each per-channel vector spread over the W*C columns of the wide view.
    channel = _channel_of_column(width, len(per_channel[0]))
    return [vector.index_select(0, channel) for vector in per_channel]


def _per_channel(column_sums: torch.Tensor, channels: int) -> torch.Tensor:
    # k x (W*C) column sums -> k x C channel sums.
    return column_sums.view(len(column_sums), -1, channels).sum(1)


class _WideBatchNorm(torch.autograd.Function):
    # Each direction makes two passes of column sums and one or two of output over the
    # activation; the per-channel arithmetic between them is done on stacked vectors,
    # a handful of tiny operations per layer.

    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        n, c, h, w = x.shape
        rows = _wide(x)
        count = n * h * w
        mean, square = _per_channel(torch.stack((rows.sum(0), (rows * rows).sum(0))), c).div_(count)
        var = torch.addcmul(square, mean, mean, value=-1)
        rstd = var.add(eps).rsqrt_()
        scale = weight * rstd
        shift = torch.addcmul(bias, mean, scale, value=-1)
        scale_columns, shift_columns = _columns(w, scale, shift)
        out = torch.addcmul(shift_columns, rows, scale_columns)
        ctx.save_for_backward(rows, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):  # type: ignore[override]
        rows, mean, rstd, weight = ctx.saved_tensors
        n, c, h, w = grad.shape
        grad_rows = _wide(grad)  # a copy only if the gradient came in another layout
        count = n * h * w
        grad_bias, grad_dot_x = _per_channel(
            torch.stack((grad_rows.sum(0), (grad_rows * rows).sum(0))), c
        )
        grad_weight = torch.addcmul(grad_dot_x, mean, grad_bias, value=-1).mul_(rstd)
        # dx = weight*rstd * (dy - mean(dy) - xhat * mean(dy*xhat)), as a*dy + b*x + offset.
        a = weight * rstd
        b = (a * rstd).mul_(grad_weight).div_(-count)
        offset = torch.addcmul((a * grad_bias).div_(-count), b, mean, value=-1)
        a_columns, b_columns, offset_columns = _columns(w, a, b, offset)
        grad_x = torch.addcmul(offset_columns, grad_rows, a_columns)
        grad_x.addcmul_(rows, b_columns)
        return grad_x.view(n, h, w, c).permute(0, 3, 1, 2), grad_weight, grad_bias, None


def wide_batch_norm(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-mode BatchNorm of a channels_last float32 ``x`` through the wide view, whatever
    its channel count: the output (differentiable in ``x``, ``weight`` and ``bias``), and the
    batch mean and biased variance per channel for the running statistics."""
    return _WideBatchNorm.apply(x, weight, bias, eps)


class WideBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that trains channels_last float32 activations of a channel count
    the native kernel handles badly on the CPU through the wide view; anything else
    (evaluation, NCHW, CUDA, autocast, 16, 24, 32... channels, no affine or running
    statistics, a cumulative ``momentum=None``) runs ``nn.BatchNorm2d`` as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._wide_applies(x):
            return super().forward(x)
        out, mean, var = wide_batch_norm(x, self.weight, self.bias, self.eps)
        with torch.no_grad():
            count = x.numel() // x.shape[1]
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var * (count / max(count - 1, 1)), self.momentum)
            self.num_batches_tracked.add_(1)
        return out

    def _wide_applies(self, x: torch.Tensor) -> bool:
        return (
            self.training
            and self.affine
            and self.track_running_stats
            and self.momentum is not None
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and x.dim() == 4
            and x.is_contiguous(memory_format=torch.channels_last)
            and not x.is_contiguous()  # NCHW, or one value per pixel: the native kernel is fine
            and not _native_is_faster(x.shape[1])
        )


def _native_is_faster(channels: int) -> bool:
    return channels >= NATIVE_MIN_CHANNELS and channels % NATIVE_MULTIPLE == 0
