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
    # docs/reference.md: no weight decay, grad 1, lr 0.1 for step 1 then 0.01: paper w2 = -0.2, PyTorch -0.119.
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


def lars_rule(w, v, grad, lr, eta, momentum=0.9, decay=5e-4):
    """LARS (You et al. 2017) on the paper's velocity, by hand in float64:
    trust = eta ||w|| / (||g|| + decay ||w||);  v <- m v - lr trust (g + decay w);  w <- w + v."""
    w_norm, g_norm = np.sqrt((w * w).sum()), np.sqrt((grad * grad).sum())
    trust = eta * w_norm / (g_norm + decay * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
    v = momentum * v - lr * trust * (grad + decay * w)
    return w + v, v


def test_lars_scales_each_weight_tensor_by_its_trust_ratio_and_leaves_biases_alone():
    rng = np.random.default_rng(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Linear(4, 3)).double()
    eta, lr = 0.02, 0.5
    groups = param_groups(model, 5e-4, decay_biases=False, trust_coefficient=eta)
    assert groups[0]["trust_coefficient"] == eta and "trust_coefficient" not in groups[1]
    opt = PaperSGD(groups, lr=lr)
    plain = copy.deepcopy(model)  # biases must move exactly as under the plain paper update
    plain_opt = PaperSGD(param_groups(plain, 5e-4, decay_biases=False), lr=lr)
    ours = {n: (p.detach().numpy().copy(), np.zeros(p.shape)) for n, p in model.named_parameters()}
    for lr_now in (lr, lr, lr / 10):  # an lr change between steps, as the schedule makes
        for group in opt.param_groups + plain_opt.param_groups:
            group["lr"] = lr_now
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            grad = rng.normal(size=p.shape) * (3.0 if p.ndim > 1 else 1.0)
            p.grad, q.grad = torch.tensor(grad), torch.tensor(grad)
            if p.ndim > 1:
                ours[name] = lars_rule(*ours[name], grad, lr_now, eta)
        opt.step()
        plain_opt.step()
        for name, p in model.named_parameters():
            if p.ndim > 1:
                np.testing.assert_allclose(p.detach().numpy(), ours[name][0], rtol=0, atol=1e-14)
                np.testing.assert_allclose(opt.state[p]["velocity"].numpy(), ours[name][1], rtol=0, atol=1e-14)
        for (name, p), q in zip(model.named_parameters(), plain.parameters()):
            if p.ndim == 1:
                assert torch.equal(p, q), name
    # the trust ratio really changed the weights' steps (eta ||w|| / ||g|| is far from 1 here)
    assert not torch.equal(model[0].weight, plain[0].weight)


def test_lars_takes_a_plain_step_where_a_norm_is_zero():
    w = torch.zeros(3, 2, dtype=torch.float64, requires_grad=True)
    opt = PaperSGD([{"params": [w], "weight_decay": 0.0, "trust_coefficient": 0.001}], lr=0.1)
    w.grad = torch.ones_like(w)
    opt.step()
    assert torch.equal(w.detach(), torch.full((3, 2), -0.1, dtype=torch.float64))
