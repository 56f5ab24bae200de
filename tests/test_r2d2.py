"""R2D2: the ridge head equals a direct solve of its system in both closed forms, its meta-gradient matches finite
differences, a singular system warns and takes the fallback, predict is pure, and it learns a task at any way."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from test_protonet import TinyNet
from torch import nn

from fewshot.learners import OuterOptimizer
from fewshot.learners.solver.r2d2 import R2D2, ridge_regression


def reference_ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """W solving the primal normal equations (X^T X + lam I) W = X^T Y, task by task."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype)
    return torch.stack([torch.linalg.solve(xb.T @ xb + lam * eye, xb.T @ yb) for xb, yb in zip(x, y, strict=True)])


@pytest.mark.parametrize(("shots", "dim"), [(6, 9), (12, 5)])  # fewer examples than dimensions, and more
def test_head_equals_a_direct_solve_of_the_ridge_system_in_both_forms(shots: int, dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, shots, dim, generator=g, dtype=torch.float64)
    y = F.one_hot(torch.randint(0, 4, (3, shots), generator=g), 4).double()
    expected = reference_ridge(x, y, 0.7)
    for form in ("dual", "primal", "auto"):
        torch.testing.assert_close(ridge_regression(x, y, 0.7, form=form), expected, rtol=1e-10, atol=1e-12)
    # the Woodbury form itself: X^T (X X^T + lam I)^-1 Y
    woodbury = x.mT @ torch.linalg.solve(x @ x.mT + 0.7 * torch.eye(shots, dtype=torch.float64), y)
    torch.testing.assert_close(expected, woodbury, rtol=1e-10, atol=1e-12)


def test_logits_are_scale_times_query_times_ridge_weights() -> None:
    g = torch.Generator().manual_seed(1)
    support, query = torch.randn(2, 6, 8, generator=g, dtype=torch.float64), torch.randn(2, 5, 8, generator=g,
                                                                                         dtype=torch.float64)
    support_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]])
    learner = R2D2(nn.Identity(), lam=0.5, scale=3.0).double()
    lam = learner.log_lambda.exp().item()  # 0.5 up to the float32 rounding of log(0.5)
    assert lam == pytest.approx(0.5, rel=1e-7)
    expected = 3.0 * query @ reference_ridge(support, F.one_hot(support_y, 3).double(), lam)
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 3), expected, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("form", ["dual", "primal"])
def test_meta_gradient_matches_finite_differences(form: str) -> None:
    g = torch.Generator().manual_seed(2)
    support = torch.randn(2, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    support_y, query_y = torch.tensor([[0, 1, 2, 0, 1, 2]] * 2), torch.tensor([[0, 1, 2, 0, 1]] * 2)
    learner = R2D2(nn.Identity(), lam=0.3, scale=2.0, form=form).double()
    # with respect to the features
    assert torch.autograd.gradcheck(lambda s, q: learner.predict_features(s, support_y, q, 3), (support, query))

    def loss() -> torch.Tensor:
        logits = learner.predict_features(support.detach(), support_y, query.detach(), 3)
        return F.cross_entropy(logits.flatten(0, 1), query_y.flatten())

    # with respect to the learned lambda (through log_lambda) and scale: central differences
    params = [learner.log_lambda, learner.scale]
    grads = torch.autograd.grad(loss(), params)
    for param, grad in zip(params, grads, strict=True):
        with torch.no_grad():
            param += 1e-6
            up = loss()
            param -= 2e-6
            down = loss()
            param += 1e-6
        assert grad.abs().item() > 1e-4
        torch.testing.assert_close(grad, (up - down) / 2e-6, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize(("shots", "dim", "form"), [(6, 9, "dual"), (12, 5, "primal")])
def test_singular_system_warns_and_takes_the_tiny_ridge_fallback(shots: int, dim: int, form: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, shots, dim, generator=g, dtype=torch.float64)
    labels = torch.arange(shots) % 3
    x[0, 1::2], labels[1::2] = x[0, 0::2], labels[0::2]  # every support example twice (the primal: rank < dim too)
    if form == "primal":
        x[0, :, -1] = x[0, :, 0]  # a duplicated feature: X^T X singular
    y = F.one_hot(labels, 3).double().unsqueeze(0)
    with pytest.warns(RuntimeWarning, match="singular or ill-conditioned"):
        weights = ridge_regression(x, y, 1e-30, form=form)
    # lambda -> 0 tends to the minimum-norm least-squares solution, which the fallback's tiny ridge reaches
    torch.testing.assert_close(weights[0], torch.linalg.pinv(x[0]) @ y[0], rtol=1e-5, atol=1e-6)
    learner = R2D2(nn.Identity(), lam=1e-30, form=form).double()
    with pytest.warns(RuntimeWarning, match="singular or ill-conditioned"):
        logits = learner.predict_features(x, labels.unsqueeze(0), x, 3)
    assert torch.isfinite(logits).all()
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        ridge_regression(torch.full_like(x, float("nan")), y, 1.0)


def test_lambda_and_scale_are_learned() -> None:
    torch.manual_seed(0)
    learner = R2D2(TinyNet(), lam=2.0)
    learner.configure_optimizer(OuterOptimizer(lr=1e-2))
    before = {name: p.item() for name, p in learner.named_parameters() if p.dim() == 0}
    assert set(before) == {"log_lambda", "scale"}
    learner.meta_train_step(template_batch(2, seed=0))
    assert all(p.item() != before[name] for name, p in learner.named_parameters() if p.dim() == 0)
    fixed = R2D2(TinyNet(), lam=2.0, learn_lambda=False)
    fixed.configure_optimizer(OuterOptimizer(lr=1e-2))
    fixed.meta_train_step(template_batch(2, seed=0))
    assert fixed.log_lambda.exp().item() == pytest.approx(2.0)




def test_invalid_arguments() -> None:
    for key, bad in (("lam", 0.0), ("lam", float("nan")), ("scale", -1.0), ("scale", float("inf")),
                     ("form", "woodbury")):
        with pytest.raises(ValueError, match=key):
            R2D2(nn.Identity(), **{key: bad})
    with pytest.raises(TypeError, match="learn_lambda"):
        R2D2(nn.Identity(), learn_lambda="yes")  # type: ignore[arg-type]


def test_learns_a_synthetic_task_and_scores_any_number_of_ways() -> None:
    torch.manual_seed(0)
    learner = R2D2(TinyNet())
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.8 and accuracy > start + 0.2, (start, accuracy)
    wide = template_batch(4, n_way=20, n_shot=5, seed=20_000)  # trained 5-way 1-shot, tested 20-way 5-shot
    logits = learner.predict(wide)
    assert logits.shape == (4, 60, 20)
    assert (logits.argmax(-1) == wide.query_y).float().mean().item() > 0.5  # chance: 0.05
