"""PaperSGD: stochastic gradient descent exactly as Krizhevsky et al. (2012) write it.

    v <- momentum * v - weight_decay * lr * w - lr * grad
    w <- w + v

The learning rate sits inside the velocity. `torch.optim.SGD` keeps `buf <- momentum * buf + grad +
wd * w; w <- w - lr * buf` instead: the same at a constant lr, but right after an lr change PyTorch
rescales every past step by the new lr, while the paper's velocity keeps the old lr's steps
(docs/reference.md spot check, grad 1, lr 0.1 then 0.01: paper w2 = -0.2, PyTorch -0.119).

Biases: weight decay applies to every parameter of a group. The trainer puts biases in a group with
weight_decay=0 by default (cuda-convnet's layer files gave a weight cost to weights only); the
`decay_biases` config key puts them with the weights.

LARS (You, Gitman and Ginsburg 2017, "Large Batch Training of Convolutional Networks"): a group with
`trust_coefficient` eta > 0 scales each tensor's step by its trust ratio
eta * ||w|| / (||grad|| + weight_decay * ||w||), on top of the paper's velocity:

    v <- momentum * v - lr * trust * (grad + weight_decay * w)
    w <- w + v

(trust 1 where ||w|| or ||grad|| is 0, e.g. a weight still at zero). Only the weights' group gets it
(`param_groups(..., trust_coefficient=eta)`); biases keep the plain update, as in the LARS paper's
AlexNet runs. With eta = 0 the update is bit for bit the paper's.
"""

from __future__ import annotations

from typing import Iterable

import torch


class PaperSGD(torch.optim.Optimizer):
    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        if not 0 <= momentum <= 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, decay = group["lr"], group["momentum"], group["weight_decay"]
            eta = group.get("trust_coefficient", 0.0)
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "velocity" not in state:  # v starts at 0, as in the paper
                    state["velocity"] = torch.zeros_like(w, memory_format=torch.preserve_format)
                v = state["velocity"]
                v.mul_(momentum)
                if eta:  # the trust ratio stays a tensor: no host sync per tensor on a GPU
                    v.sub_(torch.add(w.grad, w, alpha=decay).mul_(trust_ratio(w, decay, eta) * lr))
                else:
                    if decay:
                        v.add_(w, alpha=-decay * lr)
                    v.add_(w.grad, alpha=-lr)
                w.add_(v)
        return loss


def trust_ratio(w: torch.Tensor, weight_decay: float, eta: float) -> torch.Tensor:
    """LARS's local lr factor for one tensor, eta * ||w|| / (||grad|| + weight_decay * ||w||), as a
    0-dim tensor on w's device; 1 where either norm is 0."""
    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(w.grad)
    ratio = eta * w_norm / (g_norm + weight_decay * w_norm)
    return torch.where((w_norm > 0) & (g_norm > 0), ratio, torch.ones_like(ratio))


def param_groups(model: torch.nn.Module, weight_decay: float, decay_biases: bool,
                 trust_coefficient: float = 0.0) -> list[dict]:
    """Weights (ndim > 1) with weight decay (and LARS's trust ratio when `trust_coefficient` > 0);
    biases with weight decay only when asked, never with LARS."""
    weights, biases = [], []
    for _, p in sorted(model.named_parameters(), key=lambda item: item[0]):
        if p.requires_grad:
            (weights if p.ndim > 1 or decay_biases else biases).append(p)
    groups = [{"params": weights, "weight_decay": weight_decay}]
    if trust_coefficient:
        groups[0]["trust_coefficient"] = trust_coefficient
    if biases:
        groups.append({"params": biases, "weight_decay": 0.0})
    return groups
