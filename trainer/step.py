"""One optimiser step on one batch, as every worker takes it: forward under the run's number format
(trainer/precision.py), cross-entropy in float32, backward through the gradient scaler, the step."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.precision import Precision


def train_step(replica: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: Precision,
               images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on one batch; returns the (float32) loss and the logits. In fp32 this is
    exactly forward, cross-entropy, zero_grad, backward, step: a disabled scaler passes through."""
    with precision.autocast():
        logits = replica(images)
    loss = F.cross_entropy(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler = precision.scaler
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # fp16: unscales the gradients first, skips the step on inf/nan
    scaler.update()
    return loss, logits
