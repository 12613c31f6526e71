"""BatchNorm for channels_last activations of few channels, computed over a wide view.

The searched nets run 4 to 28 channels. In channels_last memory an activation is a
matrix of pixels x channels, and PyTorch's CPU BatchNorm walks it a few channels per
row: on these nets it took a third of the fast step, its backward 2 ms for a 620k-value
activation that a core reads in a tenth of that. Viewed as rows of (batch x height) by
columns of (width x channels), the same memory is a wide matrix whose column sums are
one vectorised pass, and the per-channel statistics are sums over the width of those.
The maths is BatchNorm's: batch mean and biased variance normalise, the running
statistics move by ``momentum`` with the unbiased variance, and the gradients are
BatchNorm's. The sums even round less than the native channels_last kernel's.

Only the training engine uses this, on the CPU, while it trains; exported modules
keep ``nn.BatchNorm2d``.
"""

from __future__ import annotations

import torch
from torch import nn


def _wide(x: torch.Tensor) -> torch.Tensor:
    # N x C x H x W in channels_last memory -> (N*H) x (W*C), the same memory.
    n, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(n * h, w * c)


def _per_channel(column_sums: torch.Tensor, channels: int) -> torch.Tensor:
    return column_sums.view(-1, channels).sum(0)


def _columns(per_channel: torch.Tensor, width: int) -> torch.Tensor:
    return per_channel.repeat(width)  # column j of the wide view holds channel j % C


class _WideBatchNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):  # type: ignore[override]
        n, c, h, w = x.shape
        rows = _wide(x)
        count = n * h * w
        mean = _per_channel(rows.sum(0), c) / count
        var = _per_channel((rows * rows).sum(0), c) / count - mean * mean
        rstd = (var + eps).rsqrt()
        scale = weight * rstd
        out = torch.addcmul(_columns(bias - mean * scale, w), rows, _columns(scale, w))
        ctx.save_for_backward(rows, mean, rstd, weight)
        ctx.mark_non_differentiable(mean, var)
        return out.view(n, h, w, c).permute(0, 3, 1, 2), mean, var

    @staticmethod
    def backward(ctx, grad, _mean, _var):  # type: ignore[override]
        rows, mean, rstd, weight = ctx.saved_tensors
        n, c, h, w = grad.shape
        grad_rows = _wide(grad)  # a copy only if the gradient came in another layout
        count = n * h * w
        grad_bias = _per_channel(grad_rows.sum(0), c)
        grad_weight = (_per_channel((grad_rows * rows).sum(0), c) - mean * grad_bias) * rstd
        # dx = weight*rstd * (dy - mean(dy) - xhat * mean(dy*xhat)), as a*dy + b*x + c.
        a = weight * rstd
        b = -a * rstd * grad_weight / count
        grad_x = torch.addcmul(
            _columns(-a * grad_bias / count - b * mean, w), grad_rows, _columns(a, w)
        )
        grad_x.addcmul_(rows, _columns(b, w))
        return grad_x.view(n, h, w, c).permute(0, 3, 1, 2), grad_weight, grad_bias, None


class WideBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that trains channels_last float32 activations on the CPU through
    the wide view; anything else (evaluation, NCHW, CUDA, autocast, no affine or running
    statistics, a cumulative ``momentum=None``) runs ``nn.BatchNorm2d`` as it is."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._wide_applies(x):
            return super().forward(x)
        out, mean, var = _WideBatchNorm.apply(x, self.weight, self.bias, self.eps)
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
        )
