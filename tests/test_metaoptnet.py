"""MetaOptNet: the SVM head's dual solution meets the KKT conditions with zero duality gap and matches an independent
solve of the primal SVM, its gradient matches finite differences, a QP cut short warns, the ridge head is R2D2's
solve, predict is pure, and it learns a task at any way."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from test_protonet import TinyNet
from torch import nn

from fewshot.learners import OuterOptimizer
from fewshot.learners.solver.metaoptnet import GRAM_JITTER, MetaOptNet
from fewshot.learners.solver.qp import crammer_singer_dual


def svm_problem(seed: int, tasks: int = 3, n: int = 8, dim: int = 12, n_way: int = 4
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Support features (tasks, n, dim) float64 (full rank: n <= dim) and labels with every class present."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.stack([torch.randperm(n, generator=g) % n_way for _ in range(tasks)])
    return torch.randn(tasks, n, dim, generator=g, dtype=torch.float64), labels


def primal_objective(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, c: float) -> torch.Tensor:
    """(B,) Crammer-Singer primal 1/2 ||W||^2 + c sum_n max_k (1 - [k = y_n] + w_k.x_n - w_{y_n}.x_n)."""
    scores = x @ w
    margins = 1.0 - F.one_hot(labels, w.shape[-1]) + scores - scores.gather(-1, labels.unsqueeze(-1))
    return 0.5 * (w * w).sum((1, 2)) + c * margins.amax(-1).sum(-1)


@pytest.mark.parametrize("c", [0.01, 0.1, 1.0, 100.0])
def test_svm_dual_solution_meets_the_kkt_conditions_with_zero_duality_gap(c: float) -> None:
    x, labels = svm_problem(0)
    gram, y = x @ x.mT, F.one_hot(labels, 4).double()
    alpha = crammer_singer_dual(gram, labels, 4, c)
    tol = 1e-8
    slack = c * y - alpha  # the Crammer-Singer multipliers: >= 0, summing to c over each example's classes
    assert (slack >= -tol * c).all()  # feasibility: alpha <= c [k == y_n]
    torch.testing.assert_close(alpha.sum(-1), torch.zeros_like(alpha.sum(-1)), rtol=0, atol=tol * c)
    # Stationarity with bound multipliers m >= 0: G alpha - Y + nu + m = 0, so nu_n = min_k (Y - G alpha)_nk, and
    # complementary slackness (m = 0 wherever slack > 0): every class with slack attains that minimum.
    score = y - gram @ alpha
    gap_to_min = score - score.amin(-1, keepdim=True)
    assert (gap_to_min[slack > 1e-6 * c] < 1e-7).all()
    assert (slack > 1e-6 * c).any() and (slack <= 1e-6 * c).any()  # both kinds of constraints occur
    # zero duality gap: the primal objective at W = X^T alpha equals the dual objective
    dual = -0.5 * (alpha * (gram @ alpha)).sum((1, 2)) + (alpha * y).sum((1, 2))
    torch.testing.assert_close(primal_objective(x, labels, x.mT @ alpha, c), dual, rtol=1e-9, atol=1e-12)


def test_svm_matches_scipy_on_the_primal_problem() -> None:
    """An independent reference: scipy's SLSQP on the primal SVM (weights and slacks, one constraint per example
    and class), whose weights must equal X^T alpha."""
    optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    x, labels = svm_problem(1, tasks=1, n=6, dim=7, n_way=3)
    c, (n, dim), k = 0.5, x.shape[1:], 3
    xs, ys = x[0].numpy(), labels[0].numpy()

    def objective(v: np.ndarray) -> float:
        return 0.5 * float(v[: dim * k] @ v[: dim * k]) + c * float(v[dim * k:].sum())

    def constraints(v: np.ndarray) -> np.ndarray:  # w_{y_n}.x_n - w_k.x_n - 1 + [k = y_n] + xi_n >= 0
        scores = xs @ v[: dim * k].reshape(dim, k)
        return (scores[np.arange(n), ys][:, None] - scores - 1.0 + np.eye(k)[ys] + v[dim * k:, None]).ravel()

    result = optimize.minimize(objective, np.zeros(dim * k + n), method="SLSQP",
                               constraints=[{"type": "ineq", "fun": constraints}], options={"ftol": 1e-14,
                                                                                             "maxiter": 500})
    assert result.success, result.message
    alpha = crammer_singer_dual(x @ x.mT, labels, k, c)
    np.testing.assert_allclose((x.mT @ alpha)[0].numpy(), result.x[: dim * k].reshape(dim, k), atol=1e-6)


@pytest.mark.parametrize("head", ["svm", "ridge"])
def test_gradient_matches_finite_differences(head: str) -> None:
    g = torch.Generator().manual_seed(2)
    support = torch.randn(2, 6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    query = torch.randn(2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    support_y, query_y = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 1, 1, 0, 0]]), torch.tensor([[0, 1, 2, 0]] * 2)
    learner = MetaOptNet(nn.Identity(), head=head, svm_c=0.5, ridge_lambda=2.0, scale=1.5).double()
    # with respect to the features (for the SVM: through the Gram matrix and the QP's KKT conditions)
    assert torch.autograd.gradcheck(lambda s, q: learner.predict_features(s, support_y, q, 3), (support, query))

    def loss() -> torch.Tensor:
        logits = learner.predict_features(support.detach(), support_y, query.detach(), 3)
        return F.cross_entropy(logits.flatten(0, 1), query_y.flatten())

    (grad,) = torch.autograd.grad(loss(), [learner.scale])
    with torch.no_grad():
        learner.scale += 1e-6
        up = loss()
        learner.scale -= 2e-6
        down = loss()
    torch.testing.assert_close(grad, (up - down) / 2e-6, rtol=1e-6, atol=1e-9)


def test_svm_logits_score_queries_with_the_dual_weights() -> None:
    x, labels = svm_problem(3, tasks=2, n=6, dim=7, n_way=3)
    query = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    learner = MetaOptNet(nn.Identity(), svm_c=0.3, scale=2.0).double()
    gram = x @ x.mT
    gram = gram + GRAM_JITTER * gram.diagonal(dim1=1, dim2=2).mean(-1)[:, None, None] * torch.eye(6)
    expected = 2.0 * query @ (x.mT @ crammer_singer_dual(gram, labels, 3, 0.3))
    torch.testing.assert_close(learner.predict_features(x, labels, query, 3), expected, rtol=1e-9, atol=1e-12)


def test_ridge_head_is_the_ridge_regression_solve() -> None:
    x, labels = svm_problem(5, tasks=2, n=6, dim=9, n_way=3)
    query = torch.randn(2, 5, 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    learner = MetaOptNet(nn.Identity(), head="ridge", ridge_lambda=50.0, scale=2.0).double()
    weights = x.mT @ torch.linalg.solve(x @ x.mT + 50.0 * torch.eye(6, dtype=torch.float64),
                                        F.one_hot(labels, 3).double())  # paper eq. 11's solution
    torch.testing.assert_close(learner.predict_features(x, labels, query, 3), 2.0 * query @ weights, rtol=1e-10,
                               atol=1e-12)


def test_a_qp_cut_short_warns_and_non_finite_features_raise() -> None:
    x, labels = svm_problem(7)
    with pytest.warns(RuntimeWarning, match="did not meet its optimality"):
        alpha = crammer_singer_dual(x @ x.mT, labels, 4, 1.0, max_iter=1)
    assert torch.isfinite(alpha).all()
    learner = MetaOptNet(nn.Identity(), qp_max_iter=1).double()
    with pytest.warns(RuntimeWarning, match="did not meet its optimality"):
        assert torch.isfinite(learner.predict_features(x, labels, x, 4)).all()
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        MetaOptNet(nn.Identity()).double().predict_features(x.clone().fill_(float("nan")), labels, x, 4)


def test_duplicate_support_features_need_the_gram_jitter() -> None:
    x, labels = svm_problem(8, tasks=1, n=6, dim=7, n_way=3)
    x[:, 1::2], labels[:, 1::2] = x[:, 0::2], labels[:, 0::2]  # every support example twice: G is singular
    with pytest.raises(FloatingPointError, match="singular"):
        crammer_singer_dual(x @ x.mT, labels, 3, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and the jittered solve converges
        logits = MetaOptNet(nn.Identity(), svm_c=0.5).double().predict_features(x, labels, x, 3)
    assert (logits.argmax(-1) == labels).all()  # the SVM separates its own (duplicated) support set


def test_predict_is_pure_inductive_and_blind_to_query_labels() -> None:
    torch.manual_seed(0)
    learner = MetaOptNet(TinyNet())
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(template_batch(2, seed=0))
    assert learner.scale.item() != 1.0  # the scale is learned
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    batch = template_batch(3, seed=1, n_query=4)
    logits = learner.predict(batch)
    assert learner.training and not learner.transductive
    for k, v in learner.state_dict().items():
        assert torch.equal(v, before[k]), k
    shuffled = batch.query_y[:, torch.randperm(20, generator=torch.Generator().manual_seed(2))]
    assert torch.equal(learner.predict(dataclasses.replace(batch, query_y=shuffled)), logits)
    keep = torch.tensor([7, 0, 13, 5])
    sub = dataclasses.replace(batch, query_x=batch.query_x[:, keep], query_y=batch.query_y[:, keep])
    torch.testing.assert_close(learner.predict(sub), logits[:, keep], rtol=1e-5, atol=1e-5)


def test_invalid_arguments() -> None:
    for key, bad in (("head", "logistic"), ("svm_c", 0.0), ("ridge_lambda", -1.0), ("scale", float("nan")),
                     ("qp_max_iter", 0)):
        with pytest.raises(ValueError, match=key):
            MetaOptNet(nn.Identity(), **{key: bad})
    with pytest.raises(TypeError, match="learn_scale"):
        MetaOptNet(nn.Identity(), learn_scale=1)  # type: ignore[arg-type]


@pytest.mark.parametrize("head", ["svm", "ridge"])
def test_learns_a_synthetic_task_and_scores_any_number_of_ways(head: str) -> None:
    torch.manual_seed(0)
    learner = MetaOptNet(TinyNet(), head=head)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(template_batch(8, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.75 and accuracy > start + 0.2, (start, accuracy)
    wide = template_batch(4, n_way=20, n_shot=5, seed=20_000)  # trained 5-way 1-shot, tested 20-way 5-shot
    logits = learner.predict(wide)
    assert logits.shape == (4, 60, 20)
    assert (logits.argmax(-1) == wide.query_y).float().mean().item() > 0.5  # chance: 0.05
