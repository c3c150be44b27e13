"""Batch norm over the global batch of every DDP rank.

``batch_size`` is global: a 2-worker run takes 32 rows per rank where a 1-worker trial takes 64.
With per-rank batch norm the two would normalise over different batches; with more than one rank
every BatchNorm layer is synchronised across ranks (:func:`sync_batchnorm`), so statistics are
over the global batch and a 1-worker trial trains like the multi-worker final model
(tests/unit/test_training_loop.py checks the parameters and running statistics match).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class CpuSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are over the batch of all ranks, for CPU (gloo).

    torch's ``nn.SyncBatchNorm`` refuses CPU tensors. This sums (sum, sum of squares, count)
    over the ranks with the differentiable ``all_reduce`` of ``torch.distributed.nn``, whose
    backward all-reduces the gradients too, so forward and backward are those of one batch
    norm over the global batch. Same parameters and buffers as ``BatchNorm*d``: checkpoints and
    exported weights load into the plain model.
    """

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        import warnings

        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1, *([1] * (x.dim() - 2))]
        # Statistics in float64: var = E[x^2] - mean^2 cancels badly in float32 when the mean is
        # large against the spread, and torch's own batch norm (what one rank runs) does not.
        xf = x.double()
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=xf.dtype, device=xf.device)
        with warnings.catch_warnings():  # deprecated in favour of functional collectives, which have no
            warnings.simplefilter("ignore", FutureWarning)  # autograd for all_reduce (needed here)
            stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
        c = xf.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_((var.detach() * n / max(float(n) - 1, 1.0)).to(self.running_var.dtype),
                                                  alpha=m)
        y = ((xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)).to(x.dtype)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def sync_batchnorm(model: nn.Module, *, world: int, device: torch.device | None = None) -> nn.Module:
    """With more than one rank, every BatchNorm layer normalises over the global batch (see the
    module docstring): torch's ``SyncBatchNorm`` on GPU, :class:`CpuSyncBatchNorm` on CPU."""
    if world <= 1:
        return model
    if device is not None and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if isinstance(model, nn.modules.batchnorm._BatchNorm) and not isinstance(model, CpuSyncBatchNorm):
        sync = CpuSyncBatchNorm(model.num_features, model.eps, model.momentum, model.affine, model.track_running_stats)
        sync.load_state_dict(model.state_dict())
        sync.train(model.training)
        # A frozen layer stays frozen: new parameters would require grad, and DDP would wait for
        # gradients a frozen backbone never produces (the frozen head's 2-worker train failed so).
        for new, old in zip(sync.parameters(), model.parameters()):
            new.requires_grad_(old.requires_grad)
        return sync
    for name, child in model.named_children():
        model.add_module(name, sync_batchnorm(child, world=world, device=device))
    return model
