"""The functional inner loop: batched == sequential == finite differences, first vs second order, a hand step."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners import MAML
from fewshot.learners.gradient.functional import NormPolicy, batch_norm, eval_mode
from fewshot.learners.gradient.inner_loop import adapt, gradient_update, map_tasks, resolve_batched


class TinyConv(nn.Module):
    """conv3x3 -> BatchNorm -> ReLU -> maxpool -> flatten on 1x4x4 images; feature_dim = hidden * 4."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.Tanh(),
                                  nn.MaxPool2d(2), nn.Flatten())
        self.feature_dim = hidden * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class TinyLinear(nn.Module):
    """Flatten -> Linear: a backbone whose MAML step can be written out by hand."""

    def __init__(self, in_dim: int, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(in_dim, dim)
        self.feature_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def random_batch(b: int, n_way: int, n_shot: int, n_query: int, size: int = 4, seed: int = 0,
                 dtype: torch.dtype = torch.float64) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n_way).repeat_interleave(n_shot).expand(b, -1).clone()
    qy = torch.arange(n_way).repeat_interleave(n_query).expand(b, -1).clone()
    return EpisodeBatch(
        support_x=torch.randn(b, n_way * n_shot, 1, size, size, generator=g, dtype=dtype),
        support_y=sy, query_x=torch.randn(b, n_way * n_query, 1, size, size, generator=g, dtype=dtype),
        query_y=qy, classes=torch.arange(n_way).expand(b, -1).clone(), episode_ids=torch.arange(b))


def make_maml(seed: int = 0, **kwargs) -> MAML:
    torch.manual_seed(seed)
    return MAML(TinyConv(), n_way=3, **kwargs).double()


def meta_grad(learner: MAML, batch: EpisodeBatch) -> list[torch.Tensor]:
    loss, _ = learner.meta_loss(batch)
    return list(torch.autograd.grad(loss, list(learner.parameters())))


@pytest.mark.parametrize("bn_mode", ["transductive", "support"])
def test_batched_meta_gradient_equals_sequential_and_finite_differences(bn_mode: str) -> None:
    batch = random_batch(3, 3, 2, 2)
    learner = make_maml(inner_lr=0.5, inner_steps=2, bn_mode=bn_mode, learn_inner_lr=True)
    learner.batched = False
    seq = meta_grad(learner, batch)
    learner.batched = True
    bat = meta_grad(learner, batch)
    for a, b in zip(seq, bat, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-10)
    # central finite differences of the meta-loss along random directions in parameter space
    params = list(learner.parameters())
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
        analytic = sum((g * d).sum() for g, d in zip(bat, direction, strict=True))
        eps = 1e-6
        values = []
        with torch.no_grad():
            for sign in (1.0, -1.0):
                for p, d in zip(params, direction, strict=True):
                    p.add_(sign * eps * d)
                values.append(learner.meta_loss(batch)[0])
                for p, d in zip(params, direction, strict=True):
                    p.sub_(sign * eps * d)
        numeric = (values[0] - values[1]) / (2 * eps)
        assert abs(float(analytic - numeric)) <= 1e-4 * abs(float(numeric)) + 1e-9


def test_first_and_second_order_differ_unless_inner_lr_is_zero() -> None:
    batch = random_batch(2, 3, 2, 2)
    second = make_maml(inner_lr=0.5, inner_steps=1)
    first = make_maml(inner_lr=0.5, inner_steps=1, first_order=True)
    gs, gf = meta_grad(second, batch), meta_grad(first, batch)
    gap = max(float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for a, b in zip(gs, gf, strict=True))
    assert gap > 1e-2
    second0 = make_maml(inner_lr=0.0, inner_steps=1)
    first0 = make_maml(inner_lr=0.0, inner_steps=1, first_order=True)
    for a, b in zip(meta_grad(second0, batch), meta_grad(first0, batch), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_parameters(batched: bool) -> None:
    """FOMAML's meta-gradient is the mean over tasks of the query-loss gradient taken at the adapted
    parameters (Finn et al. 2017, section 5.2), computed here with plain autograd on a copy of the net."""
    batch = random_batch(3, 3, 2, 2)
    learner = make_maml(inner_lr=0.5, inner_steps=2, first_order=True, batched=batched)
    names = [n for n, _ in learner.named_parameters()]
    expected = [torch.zeros_like(p) for p in learner.parameters()]
    net = nn.Sequential(learner.backbone, learner.head).train()  # train mode: each batch's statistics
    for t in range(batch.n_tasks):
        params = {n: p.detach().clone().requires_grad_() for n, p in net.named_parameters()}
        for _ in range(2):
            loss = F.cross_entropy(torch.func.functional_call(net, params, (batch.support_x[t],)), batch.support_y[t])
            grads = torch.autograd.grad(loss, list(params.values()))
            params = {n: (p - 0.5 * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads,
                                                                                          strict=True)}
        query = F.cross_entropy(torch.func.functional_call(net, params, (batch.query_x[t],)), batch.query_y[t])
        for total, g in zip(expected, torch.autograd.grad(query, list(params.values())), strict=True):
            total += g / batch.n_tasks
    got = meta_grad(learner, batch)
    assert len(names) == len(got)
    for name, a, b in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


def test_one_inner_step_matches_hand_computation() -> None:
    torch.manual_seed(0)
    learner = MAML(TinyLinear(16, 5), n_way=3, inner_lr=0.3, eval_inner_steps=1).double()
    batch = random_batch(1, 3, 2, 2)
    x, y, qx = batch.support_x[0].flatten(1), batch.support_y[0], batch.query_x[0].flatten(1)
    a, a0 = learner.backbone.fc.weight.detach(), learner.backbone.fc.bias.detach()
    w, c = learner.head.weight.detach(), learner.head.bias.detach()
    z = x @ a.T + a0
    g = (torch.softmax(z @ w.T + c, -1) - F.one_hot(y, 3).double()) / len(y)  # d loss / d logits
    dz = g @ w
    a1, a01 = a - 0.3 * dz.T @ x, a0 - 0.3 * dz.sum(0)
    w1, c1 = w - 0.3 * g.T @ z, c - 0.3 * g.sum(0)
    expected = (qx @ a1.T + a01) @ w1.T + c1
    torch.testing.assert_close(learner.predict(batch)[0], expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("batched", [False, True])
def test_gradient_update_and_adapt_on_a_quadratic(batched: bool) -> None:
    params = {"w": torch.tensor([1.0, -2.0]), "fixed": torch.tensor(3.0)}
    new = gradient_update(params, {"w": torch.tensor([0.5, 0.5])}, {"w": 2.0})
    assert torch.equal(new["w"], torch.tensor([0.0, -3.0])) and new["fixed"] is params["fixed"]
    # loss = 0.5 * |w|^2 * fixed: each step multiplies w by (1 - lr * fixed)
    adapted, losses = adapt(lambda p: 0.5 * (p["w"] ** 2).sum() * p["fixed"], params, ["w"], steps=2,
                            step_sizes={"w": 0.1}, first_order=False, batched=batched)
    torch.testing.assert_close(adapted["w"], params["w"] * 0.7 ** 2)
    torch.testing.assert_close(losses, torch.tensor([7.5, 7.5 * 0.49]))
    assert torch.equal(adapted["fixed"], params["fixed"])


def test_map_tasks_paths_agree_and_stack() -> None:
    xs = torch.randn(4, 3, 2)

    def fn(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.sum(0), (x * x).mean()

    seq, bat = map_tasks(fn, xs, batched=False), map_tasks(fn, xs, batched=True)
    assert seq[0].shape == (4, 2) and seq[1].shape == (4,)
    for a, b in zip(seq, bat, strict=True):
        torch.testing.assert_close(a, b)


def test_resolve_batched() -> None:
    assert resolve_batched("auto", torch.device("cpu")) is False
    assert resolve_batched("auto", torch.device("cuda")) is True
    assert resolve_batched(True, torch.device("cpu")) is True
    with pytest.raises(ValueError, match="batched"):
        resolve_batched("yes", torch.device("cpu"))  # type: ignore[arg-type]


def test_norm_policy_matches_batch_norm_and_never_touches_running_stats() -> None:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 4, 4)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    reference = F.batch_norm(x, None, None, bn.weight, bn.bias, training=True, eps=bn.eps)
    for primitives in (True, False):
        with eval_mode(bn), NormPolicy(primitives=primitives):
            torch.testing.assert_close(bn(x), reference)
    with eval_mode(bn), NormPolicy(stat_rows=2):
        expected = F.batch_norm(x[:2], None, None, training=True).detach()  # just the statistics' effect
        out = bn(x)
    mean, var = x[:2].mean((0, 2, 3), keepdim=True), x[:2].var((0, 2, 3), unbiased=False, keepdim=True)
    manual = (x - mean) / torch.sqrt(var + bn.eps) * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(out, manual)
    torch.testing.assert_close(out[:2], expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1))
    bn.eval()
    eval_out = bn(x)
    for primitives in (True, False):
        with NormPolicy(stats="running", primitives=primitives):
            torch.testing.assert_close(bn(x), eval_out)
    torch.testing.assert_close(batch_norm(x, None, None, eps=1e-5), F.batch_norm(x, None, None, training=True))
    for k, v in bn.state_dict().items():
        assert torch.equal(v, state[k]), k
    bn.train()
    with eval_mode(bn):
        assert not bn.training
    assert bn.training
    with pytest.raises(ValueError, match="statistics"):
        NormPolicy(stats="moving")  # type: ignore[arg-type]


def test_layer_norm_from_primitives_matches_torch() -> None:
    torch.manual_seed(0)
    ln = nn.LayerNorm([3, 4])
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.normal_()
    x = torch.randn(5, 2, 3, 4)
    for primitives in (True, False):
        with NormPolicy(primitives=primitives):
            torch.testing.assert_close(ln(x), F.layer_norm(x, [3, 4], ln.weight, ln.bias, ln.eps))
