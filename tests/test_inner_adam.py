"""The inner loop's Adam: torch.optim.Adam's trajectory on both paths, a finite second-order meta-gradient, the
settings it refuses."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.gradient.inner_loop import adapt, check_inner_optimizer, map_tasks


def small_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def task_data(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, 9, 6, generator=g, dtype=torch.float64), torch.randint(0, 3, (b, 9), generator=g)


@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.0, 0.99)])
def test_adam_steps_equal_torch_optim_adam_on_a_module_copy(batched: bool, betas: tuple[float, float]) -> None:
    """Four steps on each of three tasks, only the first layer and the last bias adapted, a learning rate per
    name: the functional loop (looped or vmapped over tasks) lands where torch.optim.Adam takes a copy."""
    net = small_net()
    params = {n: p.detach() for n, p in net.named_parameters()}
    adapted, lrs = ["0.weight", "0.bias", "2.bias"], {"0.weight": 0.05, "0.bias": 0.02, "2.bias": 0.1}
    xs, ys = task_data(3)

    def task(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        new, losses = adapt(lambda p: F.cross_entropy(torch.func.functional_call(net, p, (x,)), y), params, adapted,
                            steps=4, step_sizes=lrs, first_order=True, batched=batched, optimizer="adam",
                            betas=betas, eps=1e-8)
        return (*(new[n] for n in params), losses)

    *got, losses = map_tasks(task, xs, ys, batched=batched)
    for t in range(3):
        copy_ = copy.deepcopy(net)
        named = dict(copy_.named_parameters())
        opt = torch.optim.Adam([{"params": [named[n]], "lr": lrs[n]} for n in adapted], betas=betas, eps=1e-8)
        expected_losses = []
        for _ in range(4):
            loss = F.cross_entropy(copy_(xs[t]), ys[t])
            opt.zero_grad()
            loss.backward()
            opt.step()
            expected_losses.append(loss.detach())
        for name, value in zip(params, got, strict=True):
            torch.testing.assert_close(value[t], named[name].detach(), rtol=1e-12, atol=1e-14, msg=name)
        torch.testing.assert_close(losses[t], torch.stack(expected_losses), rtol=1e-12, atol=0)
    assert torch.equal(got[2][0], params["2.weight"])  # not adapted
    assert not torch.allclose(got[0][0], params["0.weight"])


def test_second_order_meta_gradient_through_adam_is_finite_and_matches_finite_differences() -> None:
    """A quadratic whose gradient is exactly zero in one coordinate (sqrt(v) = 0 there) for all steps: the
    outer gradient through two Adam steps is finite and equals central differences of the adapted loss."""
    target = torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64)
    scale = torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64)  # coordinate 2 never moves the loss

    def outer(theta: torch.Tensor) -> torch.Tensor:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return (scale * ((p["w"] - target) ** 2 + 0.1 * p["w"] ** 3)).sum()
        new, _ = adapt(loss, {"w": theta}, ["w"], steps=2, step_sizes={"w": 0.1}, first_order=False,
                       batched=False, optimizer="adam", betas=(0.5, 0.9), eps=1e-3)
        return ((new["w"] - 1.0) ** 2 * torch.tensor([1.0, 1.0, 3.0], dtype=torch.float64)).sum()

    theta = torch.tensor([0.5, 0.1, 0.7], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(outer(theta), theta)
    assert bool(torch.isfinite(grad).all())
    numeric = torch.stack([(outer(theta.detach() + h) - outer(theta.detach() - h)) / 2e-6
                           for h in 1e-6 * torch.eye(3, dtype=torch.float64)])
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)
    assert grad[2] != 0  # the zero-gradient coordinate still reaches the outer loss


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"optimizer": "rmsprop"}, "unknown inner optimizer"), ({"optimizer": "adam", "momentum": 0.9}, "betas"),
    ({"optimizer": "adam", "betas": (0.9, 1.0)}, "two betas"), ({"optimizer": "adam", "eps": 0.0}, "eps"),
    ({"optimizer": "sgd", "momentum": 1.0}, "momentum")])
def test_invalid_inner_optimizer_settings(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        check_inner_optimizer(**kwargs)
    with pytest.raises(ValueError, match=match):
        adapt(lambda p: p["w"].sum(), {"w": torch.zeros(2)}, ["w"], steps=1, step_sizes={"w": 0.1},
              first_order=True, batched=False, **kwargs)
