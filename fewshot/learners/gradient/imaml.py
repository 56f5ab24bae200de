"""iMAML: meta-gradients by implicit differentiation of a regularised inner problem, solved by conjugate gradient."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.gradient.inner_loop import Params, adapt
from fewshot.learners.gradient.maml import MAML, BNMode

__all__ = ["IMAML", "CGResult", "conjugate_gradient"]


@dataclass(frozen=True)
class CGResult:
    """What :func:`conjugate_gradient` found.

    Attributes:
        solution: (n,) the last iterate ``x``.
        iterations: updates of ``x`` taken (matrix-vector products used, bar the one that found non-positive
            curvature).
        residual: ``||b - A x|| / ||b||`` of the recursively updated residual (0 when ``b`` is 0).
        converged: ``residual <= tol`` was reached.
        indefinite: CG stopped on a direction ``p`` with ``p @ A p <= 0``: ``A`` is not positive definite, and
            ``solution`` is the iterate before that direction.
    """

    solution: torch.Tensor
    iterations: int
    residual: float
    converged: bool
    indefinite: bool


def conjugate_gradient(matvec: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, *, max_iter: int,
                       tol: float) -> CGResult:
    """Solve ``A x = b`` for a symmetric positive definite ``A`` known only through ``matvec(v) = A v`` (conjugate
    gradient, Hestenes & Stiefel 1952), starting from ``x = 0``.

    Stops once the relative residual ``||b - A x|| / ||b||`` is at most ``tol``, after ``max_iter`` updates, or on a
    search direction of non-positive curvature (``A`` not positive definite: see :class:`CGResult`).

    Args:
        matvec: (n,) -> (n,) product with a symmetric matrix.
        b: (n,) right-hand side.
        max_iter: at most this many updates of ``x`` (>= 1).
        tol: relative residual at which to stop (>= 0).
    Raises:
        FloatingPointError: ``b``, a product or the residual holds NaN or infinity.
    """
    if not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if b.dim() != 1:
        raise ValueError(f"b must be a vector (n,), got shape {tuple(b.shape)}")
    b_norm = float(torch.linalg.vector_norm(b))
    if not math.isfinite(b_norm):
        raise FloatingPointError("conjugate gradient: the right-hand side holds NaN or infinity")
    x = torch.zeros_like(b)
    if b_norm == 0:
        return CGResult(x, 0, 0.0, True, False)
    r, p = b.clone(), b.clone()
    rr = r @ r
    residual = 1.0
    for k in range(max_iter):
        ap = matvec(p)
        curvature = float(p @ ap)
        if not math.isfinite(curvature):
            raise FloatingPointError(f"conjugate gradient: the matrix-vector product holds NaN or infinity (update "
                                     f"{k + 1})")
        if curvature <= 0:
            return CGResult(x, k, residual, False, True)
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        residual = math.sqrt(float(rr_next)) / b_norm
        if not math.isfinite(residual):
            raise FloatingPointError(f"conjugate gradient: the residual overflowed (update {k + 1})")
        if residual <= tol:
            return CGResult(x, k + 1, residual, True, False)
        p = r + (rr_next / rr) * p
        rr = rr_next
    return CGResult(x, max_iter, residual, False, False)


def _flat(tensors: list[torch.Tensor] | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


class IMAML(MAML):
    """Implicit MAML (Rajeswaran, Finn, Kakade & Levine, NeurIPS 2019, "Meta-Learning with Implicit Gradients"),
    iMAML-GD: the inner problem solved by gradient descent, the meta-gradient by conjugate gradient.

    Backbone and linear head as :class:`~fewshot.learners.gradient.maml.MAML` (whose functional forward, batch-norm
    modes and :meth:`predict` it shares). For each task, from the meta-parameters ``theta`` (every parameter that
    requires grad when the learner is built), the inner problem is solved approximately with no graph kept (every
    step's gradient a constant), so memory does not grow with the number of inner steps. ``inner_problem`` says how:

    - ``"proximal"`` (the paper's statement): ``inner_steps`` gradient steps of size ``inner_lr`` on
      ``L_support(phi) + lam / 2 * ||phi - theta||^2``; :meth:`predict` solves the same problem.
    - ``"pull"`` (the authors' code, aravindr93/imaml_dev): ``inner_steps`` gradient steps on ``L_support`` alone,
      then one step of size ``inner_lr`` on the pull ``lam / 2 * ||phi - theta||^2``, i.e.
      ``phi <- phi - inner_lr * lam * (phi - theta)``; :meth:`predict` takes ``eval_inner_steps`` steps on
      ``L_support`` without the pull (their accuracy script runs with lam 0).

    At a minimum of the regularised problem, ``d phi* / d theta = (I + H / lam)^-1`` with ``H`` the Hessian of the
    (unregularised) support cross-entropy at ``phi*``, so the meta-gradient of a task's query cross-entropy is
    ``g = (I + H / lam)^-1 grad_phi L_query(phi*)``. It is found by :func:`conjugate_gradient` on

        ((1 + cg_damping) I + H / (lam + lam_damping)) g = grad_phi L_query(phi)

    with Hessian-vector products (double backward through one support forward at ``phi``) in at most ``cg_steps``
    updates, fewer once the relative residual is ``cg_tol``; ``cg_damping = lam_damping = 0`` is the paper's system,
    the authors' code solves ``cg_damping = 1, lam_damping = 10``. :meth:`meta_backward` adds the mean ``g`` over
    the tasks of a batch to the parameters' ``.grad``, one task at a time.

    Measured on real Omniglot 5-way 1-shot (Conv4, inner lr 0.1, 16 steps, lam 2): the paper's form does not learn
    here (training accuracy fell from 0.6 to 0.43 in 400 meta-steps, undamped or with ``cg_damping=1``): 16 steps
    leave ``phi`` far from a minimum, the unrolled gradient grows to 1e3-1e4 and the implicit one points away from
    it (cosine -0.02 to -0.34 on four tasks). The authors' form learns (0.9 training accuracy after 50 meta-steps),
    and is what ``configs/learner/imaml.yaml`` uses.

    CG that meets non-positive curvature (the system is not positive definite: ``phi`` is not a minimum of the
    regularised support loss) keeps its iterate so far (the query gradient itself if it stopped at once, i.e.
    first-order iMAML) and warns once (``RuntimeWarning``). Non-finite values raise ``FloatingPointError``.
    Not included: the paper's Hessian-free inner solver (iMAML-HF) and a learned ``lam``.

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        n_way: classes per task (size of the head).
        lam: strength of the pull towards ``theta`` (the paper's lambda, > 0).
        inner_lr, inner_steps: gradient descent on the regularised support loss in meta-training (steps >= 1);
            eval_inner_steps: in :meth:`predict`.
        cg_steps: at most this many conjugate-gradient updates per task (>= 1); cg_tol: relative residual at
            which CG stops early (in [0, 1)).
        inner_problem: ``"proximal"`` (the paper) or ``"pull"`` (the authors' code), as above.
        cg_damping: added to the identity of the implicit system (>= 0; 0 is the paper's).
        lam_damping: added to ``lam`` where it divides ``H`` in the implicit system (>= 0; 0 is the paper's).
        bn_mode, batched: as :class:`MAML` (``batched`` vmaps :meth:`predict` over tasks; the meta-gradient is
            computed task by task).
    """

    def __init__(self, backbone: nn.Module, *, n_way: int, lam: float = 2.0, inner_lr: float = 0.1,
                 inner_steps: int = 16, eval_inner_steps: int = 16, cg_steps: int = 5, cg_tol: float = 1e-5,
                 cg_damping: float = 0.0, lam_damping: float = 0.0,
                 inner_problem: Literal["proximal", "pull"] = "proximal", bn_mode: BNMode = "transductive",
                 batched: bool | Literal["auto"] = "auto") -> None:
        super().__init__(backbone, n_way=n_way, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, bn_mode=bn_mode, batched=batched)
        if not (isinstance(lam, int | float) and not isinstance(lam, bool) and 0 < lam < math.inf):
            raise ValueError(f"lam must be a positive finite number (the paper uses 2.0), got {lam!r}")
        if not (isinstance(inner_lr, int | float) and 0 < inner_lr * lam < 2):
            raise ValueError(f"inner_lr must be positive with inner_lr * lam < 2 (gradient descent on the pull "
                             f"lam/2 ||phi - theta||^2 diverges otherwise), got inner_lr={inner_lr!r}, lam={lam!r}")
        if not isinstance(inner_steps, int) or inner_steps < 1:
            raise ValueError(f"inner_steps must be an integer >= 1 (phi* is approximated by gradient steps), got "
                             f"{inner_steps!r}")
        if not isinstance(cg_steps, int) or isinstance(cg_steps, bool) or cg_steps < 1:
            raise ValueError(f"cg_steps must be an integer >= 1 (the paper uses 5), got {cg_steps!r}")
        if not (isinstance(cg_tol, int | float) and 0 <= cg_tol < 1):
            raise ValueError(f"cg_tol must be in [0, 1) (a relative residual), got {cg_tol!r}")
        if not (isinstance(cg_damping, int | float) and 0 <= cg_damping < math.inf):
            raise ValueError(f"cg_damping must be a finite number >= 0 (0: the paper's system), got {cg_damping!r}")
        if not (isinstance(lam_damping, int | float) and 0 <= lam_damping < math.inf):
            raise ValueError(f"lam_damping must be a finite number >= 0 (0: the paper's system), got {lam_damping!r}")
        if inner_problem not in ("proximal", "pull"):
            raise ValueError(f"inner_problem must be 'proximal' (the paper) or 'pull' (the authors' code), got "
                             f"{inner_problem!r}")
        self.lam, self.cg_steps, self.cg_tol, self.cg_damping = float(lam), cg_steps, float(cg_tol), float(cg_damping)
        self.lam_damping, self.inner_problem = float(lam_damping), inner_problem

    # ----------------------------------------------------------------- inner problem
    def _inner(self, prior: Params, step_sizes: Mapping[str, torch.Tensor | float], steps: int, batched: bool,
               support_x: torch.Tensor, support_y: torch.Tensor, *, meta_training: bool) -> tuple[Params, torch.Tensor]:
        """The inner problem of ``inner_problem`` from ``prior`` (detached), no graph kept: ``steps`` gradient steps
        on the support loss (plus the pull ``lam/2 ||phi - prior||^2`` for ``"proximal"``; for ``"pull"``, one pull
        step after them when ``meta_training``). Support (S, C, H, W), (S,) -> (adapted params, (steps,) loss
        before each step)."""
        prior = {n: p.detach() for n, p in prior.items()}
        proximal = self.inner_problem == "proximal"

        def loss(p: Params) -> torch.Tensor:
            ce = F.cross_entropy(self._head(p, self._features(p, support_x, primitives=batched)), support_y)
            if not proximal:
                return ce
            return ce + 0.5 * self.lam * sum(((p[n] - prior[n]) ** 2).sum() for n in self.adapted)

        phi, losses = adapt(loss, prior, self.adapted, steps=steps, step_sizes=step_sizes, first_order=True,
                            batched=batched)
        if meta_training and not proximal:
            pull = self.inner_lr * self.lam
            phi |= {n: phi[n] - pull * (phi[n] - prior[n]) for n in self.adapted}
        return phi, losses

    def _task(self, params: Params, step_sizes: dict[str, torch.Tensor | float], steps: int, first_order: bool,
              batched: bool, support_x: torch.Tensor, support_y: torch.Tensor, query_x: torch.Tensor,
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """One task of :meth:`predict` (``first_order`` is moot: the inner steps keep no graph): query logits
        (Q, n_way) after the regularised inner loop, and its (steps,) losses."""
        adapted, losses = self._inner(params, step_sizes, steps, batched, support_x, support_y, meta_training=False)
        return self._head(adapted, self._query_features(adapted, support_x, query_x, primitives=batched)), losses

    def _check_finite(self, losses: torch.Tensor, logits: torch.Tensor) -> None:
        if not (bool(torch.isfinite(losses).all()) and bool(torch.isfinite(logits).all())):
            raise FloatingPointError(
                f"iMAML inner loop diverged (non-finite regularised support loss or logits) with inner_lr="
                f"{self.inner_lr}, lam={self.lam}: lower inner_lr (inner_lr * lam must stay well below 2)")

    # ----------------------------------------------------------------- implicit meta-gradient
    def _task_gradient(self, phi: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                       query_grad: torch.Tensor) -> CGResult:
        """CG on ``((1 + cg_damping) I + H / (lam + lam_damping)) g = query_grad``, ``H`` the support
        cross-entropy's Hessian at ``phi`` (whose adapted entries require grad); vectors are the adapted parameters
        flattened in ``self.adapted`` order."""
        inputs = [phi[n] for n in self.adapted]
        support = F.cross_entropy(self._head(phi, self._features(phi, support_x, primitives=False)), support_y)
        grads = torch.autograd.grad(support, inputs, create_graph=True)
        sizes = [t.numel() for t in inputs]

        def matvec(v: torch.Tensor) -> torch.Tensor:
            parts = [part.view_as(t) for part, t in zip(v.split(sizes), inputs, strict=True)]
            hv = torch.autograd.grad(grads, inputs, grad_outputs=parts, retain_graph=True, materialize_grads=True)
            return (1.0 + self.cg_damping) * v + _flat(hv) / (self.lam + self.lam_damping)

        return conjugate_gradient(matvec, query_grad, max_iter=self.cg_steps, tol=self.cg_tol)

    def _meta_gradient(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean query loss at the inner solutions, (B, n_way*n_query, n_way) logits, and the mean implicit
        meta-gradient over tasks, flattened over ``self.adapted`` (all detached)."""
        self._check_way(batch)
        theta, step_sizes = self._params(detach=True), self._step_sizes(detach=True)
        total = theta[self.adapted[0]].new_zeros(sum(theta[n].numel() for n in self.adapted))
        losses, all_logits, indefinite = [], [], 0
        with self._batch_scope():
            for i in range(batch.n_tasks):
                sx, sy = batch.support_x[i], batch.support_y[i]
                phi, inner_losses = self._inner(theta, step_sizes, self.inner_steps, False, sx, sy,
                                                meta_training=True)
                phi |= {n: phi[n].detach().requires_grad_() for n in self.adapted}
                logits = self._head(phi, self._query_features(phi, sx, batch.query_x[i], primitives=False))
                self._check_finite(inner_losses, logits.detach())
                loss = F.cross_entropy(logits, batch.query_y[i])
                query_grad = _flat(torch.autograd.grad(loss, [phi[n] for n in self.adapted]))
                try:
                    result = self._task_gradient(phi, sx, sy, query_grad)
                except FloatingPointError as err:
                    raise FloatingPointError(f"iMAML meta-gradient of task {i}: {err}; lower inner_lr or raise lam "
                                             f"(now {self.inner_lr} and {self.lam})") from err
                if result.indefinite:
                    indefinite += 1
                # Stopped before any update: I is the approximation of (I + H/lam)^-1 left (first-order iMAML).
                solution = result.solution if result.iterations else query_grad
                total += solution / batch.n_tasks
                losses.append(loss.detach())
                all_logits.append(logits.detach())
        if indefinite:  # a RuntimeWarning: shown once per process by Python's default filter
            warnings.warn(f"iMAML: in {indefinite} of {batch.n_tasks} tasks conjugate gradient met non-positive "
                          "curvature (I + H/lam is not positive definite: the inner loop is not at a minimum of the "
                          "regularised support loss) and stopped early, so those meta-gradients are cruder. Raise lam "
                          f"(now {self.lam:g}), take more inner steps (now {self.inner_steps}) or lower inner_lr "
                          f"(now {self.inner_lr:g})", RuntimeWarning, stacklevel=1)
        return torch.stack(losses).mean(), torch.stack(all_logits), total

    # ----------------------------------------------------------------- Learner API
    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean query cross-entropy at the inner solutions, with the implicit meta-gradient as its gradient.

        The inner solutions keep no graph, so the value is detached; the returned loss adds
        ``<g, theta> - <g, theta>.detach()`` (zero in value), so ``loss.backward()`` gives ``theta`` the mean
        implicit meta-gradient ``g`` of :meth:`meta_backward` (and no higher derivatives).

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) detached query logits).
        """
        loss, logits, grad = self._meta_gradient(batch)
        params = dict(self.named_parameters())
        link = grad @ _flat([params[n] for n in self.adapted])
        return loss + link - link.detach(), logits

    def meta_backward(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the mean implicit meta-gradient over the tasks of ``batch`` to each adapted parameter's ``.grad``
        (tasks one at a time: one task's Hessian-vector graph is alive at once).

        Returns:
            detached (mean query loss, (B, n_way*n_query, n_way) logits).
        """
        loss, logits, grad = self._meta_gradient(batch)
        params = dict(self.named_parameters())
        for name, g in zip(self.adapted, grad.split([params[n].numel() for n in self.adapted]), strict=True):
            p = params[name]
            p.grad = g.view_as(p).clone() if p.grad is None else p.grad + g.view_as(p)
        return loss, logits
