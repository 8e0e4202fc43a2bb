"""PaperSGD follows the paper's update rule, checked against numpy step by step across lr changes."""

import copy

import numpy as np
import pytest
import torch

from trainer.optim import PaperSGD, param_groups


def paper_rule(w, v, grad, lr, momentum=0.9, decay=5e-4):
    """v <- m v - decay lr w - lr grad; w <- w + v  (Krizhevsky et al. 2012, section 5), in float64."""
    v = momentum * v - decay * lr * w - lr * grad
    return w + v, v


def test_spot_check_from_reference():
    # REFERENCE.md: no weight decay, grad 1, lr 0.1 for step 1 then 0.01: paper w2 = -0.2, PyTorch -0.119.
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.0)
    values = []
    for lr in (0.1, 0.01):
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.ones_like(w)
        opt.step()
        values.append(w.item())
    assert values == pytest.approx([-0.1, -0.2], abs=1e-15)

    # and torch.optim.SGD really differs there, so the check above can tell the two apart
    t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    sgd = torch.optim.SGD([t], lr=0.1, momentum=0.9)
    for lr in (0.1, 0.01):
        sgd.param_groups[0]["lr"] = lr
        t.grad = torch.ones_like(t)
        sgd.step()
    assert t.item() == pytest.approx(-0.119)


def test_matches_numpy_step_by_step_across_lr_changes():
    rng = np.random.default_rng(0)
    w_np = rng.normal(size=(7, 5))
    v_np = np.zeros_like(w_np)
    w = torch.tensor(w_np, requires_grad=True)  # float64: the comparison is exact up to rounding
    opt = PaperSGD([w], lr=0.01, momentum=0.9, weight_decay=5e-4)
    lrs = [0.01] * 4 + [0.001] * 3 + [0.0001] * 3
    for lr in lrs:
        grad = rng.normal(size=w_np.shape)
        opt.param_groups[0]["lr"] = lr
        w.grad = torch.tensor(grad)
        opt.step()
        w_np, v_np = paper_rule(w_np, v_np, grad, lr)
        np.testing.assert_allclose(w.detach().numpy(), w_np, rtol=0, atol=1e-14)
        np.testing.assert_allclose(opt.state[w]["velocity"].numpy(), v_np, rtol=0, atol=1e-14)


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    a = torch.randn(4, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    opt_a = PaperSGD([a], lr=0.05)
    grads = [torch.randn(4, 3) for _ in range(6)]
    for g in grads[:3]:
        a.grad = g.clone()
        opt_a.step()
    b.data.copy_(a.data)
    opt_b = PaperSGD([b], lr=0.05)
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as from a file: no shared tensors
    for g in grads[3:]:
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert torch.equal(a, b)


def test_biases_skip_weight_decay_unless_asked():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Linear(4, 2))
    groups = param_groups(model, 5e-4, decay_biases=False)
    assert [g["weight_decay"] for g in groups] == [5e-4, 0.0]
    assert all(p.ndim > 1 for p in groups[0]["params"]) and all(p.ndim == 1 for p in groups[1]["params"])
    # a bias with zero gradient and decay 0 does not move; with decay it shrinks
    opt = PaperSGD(groups, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    before = [p.detach().clone() for p in groups[1]["params"]]
    opt.step()
    assert all(torch.equal(p, q) for p, q in zip(groups[1]["params"], before))
    assert len(param_groups(model, 5e-4, decay_biases=True)) == 1


def test_rejects_bad_hyperparameters():
    w = torch.zeros(1, requires_grad=True)
    with pytest.raises(ValueError):
        PaperSGD([w], lr=0)
    with pytest.raises(ValueError):
        PaperSGD([w], lr=0.1, momentum=1.5)
