"""iMAML: the CG solver against a dense solve, the implicit meta-gradient against finite differences at the exact inner
solution and against the dense implicit formula, predict leaves the learner untouched, learning, failure modes."""

from __future__ import annotations

import functools

import pytest
import synthetic
import torch
import torch.nn.functional as F
from test_inner_loop import TinyConv, random_batch
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners import OuterOptimizer
from fewshot.learners.gradient.functional import NormPolicy, eval_mode
from fewshot.learners.gradient.imaml import IMAML, conjugate_gradient
from fewshot.learners.gradient.maml import MAML


def spd(n: int, condition: float, seed: int) -> torch.Tensor:
    """(n, n) float64 symmetric positive definite matrix with eigenvalues spread over [1, condition]."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(condition)).item(), n,
                                         dtype=torch.float64)) @ q.T


# ----------------------------------------------------------------------------- (a) the CG solver
def test_cg_solves_an_spd_system_to_tolerance() -> None:
    a = spd(40, 100.0, seed=0)
    b = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=200, tol=1e-10)
    assert result.converged and not result.indefinite and result.iterations <= 200
    assert torch.linalg.vector_norm(b - a @ result.solution) <= 1e-10 * torch.linalg.vector_norm(b) * 1.01
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-8, atol=1e-10)


def test_cg_is_exact_after_as_many_updates_as_distinct_eigenvalues() -> None:
    """With 3 distinct eigenvalues the Krylov space after 3 products holds the solution (exact arithmetic)."""
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([1.0, 4.0, 9.0], dtype=torch.float64).repeat(10)) @ q.T
    b = torch.randn(30, generator=g, dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=3, tol=0.0)
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-12)
    assert result.iterations == 3 and result.residual < 1e-10


def test_cg_stopped_early_reports_its_true_residual() -> None:
    a = spd(40, 1e4, seed=3)
    b = torch.randn(40, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    result = conjugate_gradient(lambda v: a @ v, b, max_iter=3, tol=1e-8)
    assert not result.converged and result.iterations == 3
    expected = (torch.linalg.vector_norm(b - a @ result.solution) / torch.linalg.vector_norm(b)).item()
    assert result.residual == pytest.approx(expected, rel=1e-8) and result.residual > 1e-3


def test_cg_zero_right_hand_side_and_invalid_arguments() -> None:
    result = conjugate_gradient(lambda v: 2 * v, torch.zeros(5), max_iter=3, tol=0.0)
    assert result.converged and result.iterations == 0 and torch.equal(result.solution, torch.zeros(5))
    for kwargs, match in [({"max_iter": 0, "tol": 0.1}, "max_iter"), ({"max_iter": 2, "tol": -1.0}, "tol")]:
        with pytest.raises(ValueError, match=match):
            conjugate_gradient(lambda v: v, torch.ones(3), **kwargs)
    with pytest.raises(ValueError, match="vector"):
        conjugate_gradient(lambda v: v, torch.ones(3, 1), max_iter=2, tol=0.0)


# ----------------------------------------------------------------------------- (d) CG failure modes
def test_cg_non_finite_values_raise() -> None:
    with pytest.raises(FloatingPointError, match="NaN or infinity"):
        conjugate_gradient(lambda v: v * float("nan"), torch.ones(4), max_iter=3, tol=0.0)
    with pytest.raises(FloatingPointError, match="right-hand side"):
        conjugate_gradient(lambda v: v, torch.tensor([1.0, float("inf")]), max_iter=3, tol=0.0)


def test_cg_stops_on_non_positive_curvature() -> None:
    a = torch.diag(torch.tensor([1.0, 2.0, -3.0], dtype=torch.float64))
    result = conjugate_gradient(lambda v: a @ v, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64), max_iter=5,
                                tol=0.0)
    assert result.indefinite and not result.converged and result.iterations == 0
    assert torch.equal(result.solution, torch.zeros(3, dtype=torch.float64))


# ----------------------------------------------------------------------------- (b) the implicit meta-gradient
class FrozenLinear(nn.Module):
    """Flatten -> fixed Linear(4, 6) -> tanh: frozen features, so the adapted parameters are the head alone and the
    inner problem (cross-entropy + ridge) is strongly convex."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 6).requires_grad_(False)
        self.feature_dim = 6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.fc(x.flatten(1)))


def head_problem(lam: float) -> tuple[IMAML, EpisodeBatch]:
    """3-way 2-shot 2-query tasks on 1x2x2 images, float64; the inner loop run to convergence."""
    torch.manual_seed(0)
    learner = IMAML(FrozenLinear(), n_way=3, lam=lam, inner_lr=0.2, inner_steps=400, eval_inner_steps=400,
                    cg_steps=50, cg_tol=1e-13).double()
    assert learner.adapted == ["head.weight", "head.bias"]
    return learner, random_batch(2, 3, 2, 2, size=2, seed=5)


def exact_inner_solution(learner: IMAML, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """argmin_phi CE(feats @ W.T + b) + lam/2 ||phi - theta||^2 over phi = (W, b) flattened, by Newton's method
    (strongly convex: converges to machine precision)."""
    theta = torch.cat([learner.head.weight.detach().reshape(-1), learner.head.bias.detach()])
    n_way, dim = learner.head.weight.shape

    def objective(phi: torch.Tensor) -> torch.Tensor:
        w, b = phi[: n_way * dim].view(n_way, dim), phi[n_way * dim:]
        return F.cross_entropy(feats @ w.T + b, y) + 0.5 * learner.lam * ((phi - theta) ** 2).sum()

    phi, grad = theta.clone(), torch.func.grad(objective)(theta)
    for _ in range(20):
        if torch.linalg.vector_norm(grad) < 1e-14:
            return phi
        phi = phi - torch.linalg.solve(torch.autograd.functional.hessian(objective, phi), grad)
        grad = torch.func.grad(objective)(phi)
    raise AssertionError(f"Newton did not converge: gradient norm {torch.linalg.vector_norm(grad)}")


def query_loss_at_exact_solution(learner: IMAML, batch: EpisodeBatch) -> float:
    """Mean over tasks of the query cross-entropy at each task's exact inner solution."""
    n_way, dim = learner.head.weight.shape
    total = 0.0
    for i in range(batch.n_tasks):
        with torch.no_grad():
            support, query = learner.backbone(batch.support_x[i]), learner.backbone(batch.query_x[i])
        phi = exact_inner_solution(learner, support, batch.support_y[i])
        logits = query @ phi[: n_way * dim].view(n_way, dim).T + phi[n_way * dim:]
        total += F.cross_entropy(logits, batch.query_y[i]).item() / batch.n_tasks
    return total


def head_grads(learner: IMAML) -> torch.Tensor:
    return torch.cat([learner.head.weight.grad.reshape(-1), learner.head.bias.grad])


def test_implicit_meta_gradient_equals_finite_differences_at_the_exact_inner_solution() -> None:
    learner, batch = head_problem(lam=2.0)
    loss, _ = learner.meta_backward(batch)
    assert loss.item() == pytest.approx(query_loss_at_exact_solution(learner, batch), rel=1e-12)
    grad = head_grads(learner)
    params, eps, numeric = [learner.head.weight, learner.head.bias], 1e-6, []
    for p in params:
        for k in range(p.numel()):
            values = []
            for sign in (1, -1):
                with torch.no_grad():
                    p.view(-1)[k] += sign * eps
                values.append(query_loss_at_exact_solution(learner, batch))
                with torch.no_grad():
                    p.view(-1)[k] -= sign * eps
            numeric.append((values[0] - values[1]) / (2 * eps))
    torch.testing.assert_close(grad, torch.tensor(numeric, dtype=torch.float64), rtol=1e-6, atol=1e-9)


def dense_implicit_gradient(learner: IMAML, batch: EpisodeBatch, *, steps: int, damping: float = 0.0,
                            lam_damping: float = 0.0, pull: bool = False) -> torch.Tensor:
    """Mean over tasks of ((1 + damping) I + H/(lam + lam_damping))^-1 grad L_query(phi), H the dense Hessian of the
    support cross-entropy at phi = ``steps`` plain gradient steps on the regularised support loss (``pull``: on the
    support loss alone, then phi <- phi - lr * lam * (phi - theta)), all written out here (float64)."""
    names = learner.adapted
    theta = {n: p.detach() for n, p in learner.named_parameters()}
    sizes = [theta[n].numel() for n in names]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return theta | {n: part.view_as(theta[n]) for n, part in zip(names, v.split(sizes), strict=True)}

    def cross_entropy(v: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = unflat(v)
        backbone = {n[len("backbone."):]: t for n, t in p.items() if n.startswith("backbone.")}
        feats = torch.func.functional_call(learner.backbone, backbone, (x,))
        return F.cross_entropy(F.linear(feats, p["head.weight"], p["head.bias"]), y)

    start = torch.cat([theta[n].reshape(-1) for n in names])
    total = torch.zeros_like(start)
    # Batch norm from the statistics of each batch it sees (the learner's bn_mode="transductive").
    with eval_mode(learner.backbone), NormPolicy(stats="batch"):
        for i in range(batch.n_tasks):
            sx, sy = batch.support_x[i], batch.support_y[i]
            phi = start.clone()
            for _ in range(steps):
                grad = torch.func.grad(cross_entropy)(phi, sx, sy) + (0.0 if pull else learner.lam) * (phi - start)
                phi = phi - learner.inner_lr * grad
            if pull:
                phi = phi - learner.inner_lr * learner.lam * (phi - start)
            hessian = torch.autograd.functional.hessian(functools.partial(cross_entropy, x=sx, y=sy), phi)
            query_grad = torch.func.grad(cross_entropy)(phi, batch.query_x[i], batch.query_y[i])
            identity = torch.eye(len(phi), dtype=phi.dtype)
            total += torch.linalg.solve((1 + damping) * identity + hessian / (learner.lam + lam_damping), query_grad)
    return total / batch.n_tasks


def test_implicit_meta_gradient_equals_the_dense_formula() -> None:
    learner, batch = head_problem(lam=2.0)
    learner.meta_backward(batch)
    torch.testing.assert_close(head_grads(learner), dense_implicit_gradient(learner, batch, steps=400),
                               rtol=1e-9, atol=1e-12)


def test_damped_meta_gradient_solves_the_damped_system() -> None:
    learner, batch = head_problem(lam=2.0)
    learner.cg_damping = 1.0  # the authors' code damps the identity (2 I + H / (lam + 10))
    learner.meta_backward(batch)
    damped = dense_implicit_gradient(learner, batch, steps=400, damping=1.0)
    torch.testing.assert_close(head_grads(learner), damped, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(damped, dense_implicit_gradient(learner, batch, steps=400))


def test_the_authors_pull_variant_solves_their_damped_system_at_their_inner_solution() -> None:
    """inner_problem="pull": plain gradient steps, one pull step, then ((1 + 1) I + H / (lam + 10)) g = grad."""
    learner, batch = head_problem(lam=2.0)
    learner.inner_problem, learner.cg_damping, learner.lam_damping, learner.inner_steps = "pull", 1.0, 10.0, 20
    learner.meta_backward(batch)
    expected = dense_implicit_gradient(learner, batch, steps=20, damping=1.0, lam_damping=10.0, pull=True)
    torch.testing.assert_close(head_grads(learner), expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(expected, dense_implicit_gradient(learner, batch, steps=20, damping=1.0, pull=True))
    assert not torch.allclose(expected, dense_implicit_gradient(learner, batch, steps=20, damping=1.0,
                                                                lam_damping=10.0))


def test_the_pull_variant_predicts_with_plain_gradient_steps() -> None:
    """predict under "pull" adapts on the support loss alone (the authors' accuracy script runs with lam 0)."""
    learner, batch = head_problem(lam=2.0)
    learner.inner_problem, learner.eval_inner_steps = "pull", 7
    maml = MAML(learner.backbone, n_way=3, inner_lr=0.2, inner_steps=7, eval_inner_steps=7).double()
    maml.head.load_state_dict(learner.head.state_dict())
    torch.testing.assert_close(learner.predict(batch), maml.predict(batch), rtol=1e-12, atol=1e-12)
    learner.inner_problem = "proximal"
    assert not torch.allclose(learner.predict(batch), maml.predict(batch))


class SmoothConv(nn.Module):
    """conv3x3 -> BatchNorm -> tanh -> average pool -> flatten on 1x4x4 images (smooth, unlike max pooling, so the
    inner loop converges to a minimum); feature_dim = hidden * 4."""

    def __init__(self, hidden: int = 3) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.Tanh(),
                                  nn.AvgPool2d(2), nn.Flatten())
        self.feature_dim = hidden * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def test_implicit_meta_gradient_through_a_batch_norm_backbone() -> None:
    """Every parameter adapted (conv, batch norm, head), the paper's lam=2: the meta-gradient equals the dense formula
    at the same inner iterate, and, the inner loop having converged (a minimum of the regularised support loss),
    finite differences of the query loss along random directions."""
    torch.manual_seed(0)
    learner = IMAML(SmoothConv(), n_way=3, lam=2.0, inner_lr=0.2, inner_steps=100, eval_inner_steps=100,
                    cg_steps=200, cg_tol=1e-13).double()
    batch = random_batch(2, 3, 2, 2, seed=6)
    loss, _ = learner.meta_backward(batch)
    params = [p for n, p in learner.named_parameters() if n in learner.adapted]
    assert len(params) == 6  # conv, batch norm and head weights and biases
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    torch.testing.assert_close(grad, dense_implicit_gradient(learner, batch, steps=100), rtol=1e-8, atol=1e-11)

    def query_loss() -> float:
        logits = learner.predict(batch)
        return F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten()).item()

    assert query_loss() == pytest.approx(loss.item(), rel=1e-12)
    g, eps = torch.Generator().manual_seed(7), 1e-5
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p += sign * eps * d
            values.append(query_loss())
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p -= sign * eps * d
        numeric = (values[0] - values[1]) / (2 * eps)
        analytic = sum((p.grad * d).sum() for p, d in zip(params, direction, strict=True)).item()
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_meta_loss_carries_the_meta_gradient_of_meta_backward() -> None:
    batch = random_batch(2, 3, 1, 2, seed=8)
    torch.manual_seed(0)
    a = IMAML(TinyConv(), n_way=3, inner_steps=4, cg_steps=3).double()
    b = IMAML(TinyConv(), n_way=3, inner_steps=4, cg_steps=3).double()
    b.load_state_dict(a.state_dict())
    loss_a, logits_a = a.meta_backward(batch)
    loss_b, logits_b = b.meta_loss(batch)
    loss_b.backward()
    torch.testing.assert_close(loss_b.detach(), loss_a, rtol=1e-14, atol=0)
    torch.testing.assert_close(loss_a, F.cross_entropy(logits_a.flatten(0, 1), batch.query_y.flatten()))
    torch.testing.assert_close(logits_b, logits_a, rtol=0, atol=0)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, rtol=1e-12, atol=1e-15, msg=name)


# ----------------------------------------------------------------------------- (c) predict and learning
template_batch = functools.partial(synthetic.template_batch, noise=0.7)


class TinyNet(nn.Module):
    """Two conv -> BatchNorm -> ReLU -> maxpool blocks on 1x8x8 images; feature_dim = hidden * 4."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.BatchNorm2d(hidden), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten())
        self.feature_dim = hidden * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make(seed: int = 0, **kwargs) -> IMAML:
    torch.manual_seed(seed)
    return IMAML(TinyNet(), n_way=5, **{"inner_lr": 0.1, "inner_steps": 5, "eval_inner_steps": 5, "cg_steps": 3,
                                        **kwargs})


@pytest.mark.parametrize("kwargs", [{}, {"bn_mode": "support"}, {"batched": True}, {"inner_problem": "pull"}])
def test_predict_leaves_learner_untouched(kwargs: dict) -> None:
    learner = make(**kwargs)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(template_batch(2, seed=5))  # non-trivial weights and optimizer state
    learner.train()
    before = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    batch = template_batch(3, seed=1)
    logits = learner.predict(batch)
    with torch.no_grad():
        again = learner.predict(batch)
    assert logits.shape == (3, 15, 5) and not logits.requires_grad
    torch.testing.assert_close(logits, again, rtol=0, atol=0)
    after = learner.state_dict()
    for k in before:
        assert torch.equal(before[k], after[k]), f"predict changed {k}"
    assert learner.training and all(m.training for m in learner.modules())
    assert learner.transductive == (learner.bn_mode == "transductive")


@pytest.mark.parametrize(("kwargs", "gain"), [
    ({}, 0.1),
    # predict adapts without the pull: 0.84 before meta-training already
    ({"inner_problem": "pull", "cg_damping": 1.0, "lam_damping": 10.0}, 0.03),
])
def test_learns_a_synthetic_task(kwargs: dict, gain: float) -> None:
    learner = make(**kwargs)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(30):
        learner.meta_train_step(template_batch(4, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + gain, (start, accuracy)


# ----------------------------------------------------------------------------- (d) failure modes of the learner
def test_divergent_inner_loop_raises() -> None:
    learner = make(inner_lr=1e30, lam=1e-31)
    with pytest.raises(FloatingPointError, match="lower inner_lr"):
        learner.predict(template_batch(2, seed=0))
    with pytest.raises(FloatingPointError, match="lower inner_lr"):
        learner.meta_backward(template_batch(2, seed=0))


def test_non_positive_curvature_warns_and_keeps_a_finite_gradient() -> None:
    """lam -> 0 makes I + H/lam follow the indefinite Hessian of a network away from a minimum."""
    torch.manual_seed(0)
    learner = IMAML(TinyConv(), n_way=3, lam=1e-3, inner_lr=0.01, inner_steps=1, cg_steps=20).double()
    with pytest.warns(RuntimeWarning, match=r"in 2 of 2 tasks conjugate gradient met non-positive curvature.*lam"):
        learner.meta_backward(random_batch(2, 3, 2, 2, seed=0))
    assert all(bool(torch.isfinite(p.grad).all()) for p in learner.parameters())


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"lam": 0.0}, "lam"), ({"lam": float("inf")}, "lam"), ({"cg_steps": 0}, "cg_steps"),
    ({"cg_steps": 2.5}, "cg_steps"), ({"cg_tol": 1.0}, "cg_tol"), ({"inner_steps": 0}, "inner_steps"),
    ({"bn_mode": "running"}, "bn_mode"), ({"inner_lr": float("nan")}, "inner_lr"),
    ({"inner_lr": 1.0, "lam": 2.0}, "inner_lr \\* lam < 2"), ({"cg_damping": -1.0}, "cg_damping"),
    ({"lam_damping": float("nan")}, "lam_damping"), ({"inner_problem": "newton"}, "inner_problem"),
])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_wrong_number_of_ways_is_refused() -> None:
    with pytest.raises(ValueError, match="n_way=3"):
        make().meta_backward(template_batch(1, n_way=3, seed=0))
