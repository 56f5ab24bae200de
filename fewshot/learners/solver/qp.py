"""The dual of the Crammer-Singer multi-class SVM, solved for a batch of tasks in one tensor computation, and
differentiable through its optimality (KKT) conditions: MetaOptNet's base learner.

Method. A batched primal-dual interior-point method (Mehrotra's predictor-corrector), run in float64 without
gradients, finds which inequality constraints are active at the optimum. The solution is then recomputed, with
autograd, as the solution of the equality-constrained QP on that active set (batched Cholesky factorisations), exact
to rounding. Its derivative is the implicit derivative of the KKT conditions (Lee et al. 2019, Theorem 1), valid
wherever the active set does not change under a small perturbation (strict complementarity), which holds for
almost every input. The KKT conditions of that solution are checked: a solve that has not met them within
``max_iter`` interior-point iterations warns and returns its best estimate; NaN or infinity raises.

Why not a library: qpth 0.0.18 (the solver of the paper's code) requires numpy<2 and cvxpy; cvxpylayers 1.2.0
installs beside torch 2.13 but solves one problem at a time on the CPU (diffcp, to ~1e-5). Why implicit
differentiation rather than unrolling the solver: the gradient is that of the exact solution, independent of the
iterations taken, and no solver trace is kept in memory.

The QP has a block structure that every step uses: the Hessian is ``G`` once per class (block diagonal over the
classes), the inequality constraints are simple upper bounds and the equality constraints couple the classes of one
support example only, so a Newton step costs ``n_way`` Cholesky factorisations of ``N x N`` plus one ``N x N``
solve (``N`` support examples) instead of one factorisation of ``N * n_way`` unknowns.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

__all__ = ["crammer_singer_dual"]

_TO_BOUNDARY = 0.99  # fraction of the largest step that keeps slacks and multipliers positive
_CHECK_BELOW = 1e-4  # scaled duality measure under which the active set of an iterate is checked
_NEWTON_RIDGE = 1e-10  # of the mean diagonal of G (at least 1), added to the interior point's Newton matrices


def crammer_singer_dual(gram: torch.Tensor, labels: torch.Tensor, n_way: int, c: float, *, max_iter: int = 50,
                        tol: float = 1e-7) -> torch.Tensor:
    """Solve the Crammer-Singer SVM dual (Lee et al. 2019, eq. 10) of every task of a batch.

    For each task, with support Gram matrix ``G`` and labels ``y``, find ``A`` (N, n_way) minimising
    ``1/2 sum_k A[:, k]^T G A[:, k] - sum_n A[n, y_n]`` subject to ``A[n, k] <= c [k == y_n]`` and
    ``sum_k A[n, k] = 0``. The SVM's class weights are ``w_k = sum_n A[n, k] x_n``, so a query ``q`` scores
    ``sum_n A[n, k] <x_n, q>``.

    Args:
        gram: (B, N, N) symmetric positive definite Gram matrices ``x_n . x_m`` of the support features (add a small
            multiple of the identity to a singular one, e.g. when N exceeds the feature dimension).
        labels: (B, N) int64 support labels in [0, n_way).
        n_way: number of classes per task.
        c: the SVM's regularisation constant (> 0): the hinge-loss weight of the primal problem.
        max_iter: interior-point iterations at most (>= 1).
        tol: tolerance of the KKT conditions of the returned solution, relative to ``c`` (primal) and to
            ``1 + c * max|G|`` (stationarity).
    Returns:
        (B, N, n_way) dual solution ``A``, differentiable with respect to ``gram``, in the dtype of ``gram``.
    Raises:
        FloatingPointError: ``gram`` or the solution holds NaN or infinity.
        ValueError: shapes or arguments out of range.
    Warns:
        RuntimeWarning: some task's solution misses its KKT conditions by more than ``tol`` after ``max_iter``
            iterations (the estimate is returned).
    """
    if gram.dim() != 3 or gram.shape[1] != gram.shape[2]:
        raise ValueError(f"gram must be (B, N, N), got {tuple(gram.shape)}")
    if labels.shape != gram.shape[:2]:
        raise ValueError(f"labels must be (B, N) = {tuple(gram.shape[:2])}, got {tuple(labels.shape)}")
    if not (isinstance(c, int | float) and math.isfinite(c) and c > 0):
        raise ValueError(f"the SVM constant c must be a positive finite number, got {c!r}")
    if not (isinstance(max_iter, int) and max_iter >= 1) or not (isinstance(tol, int | float) and tol > 0):
        raise ValueError(f"need an integer max_iter >= 1 and tol > 0, got {max_iter!r} and {tol!r}")
    if not bool(torch.isfinite(gram).all()):
        raise FloatingPointError("the SVM's Gram matrix holds NaN or infinity: the support features are not finite "
                                 "(the backbone diverged); lower the learning rate or use gradient clipping")
    y = F.one_hot(labels, n_way).to(torch.float64)  # (B, N, K)
    g = gram.to(torch.float64)
    scale = 1.0 + c * g.detach().abs().amax((1, 2))  # (B,) size of the stationarity terms
    with torch.no_grad():
        free = _interior_point(g.detach(), y, c, scale, max_iter, tol)
    alpha, nu = _solve_on_active_set(g, y, c, free)
    if not bool(torch.isfinite(alpha).all()):
        raise FloatingPointError("the Crammer-Singer SVM dual has a non-finite solution; the Gram matrix is singular "
                                 "or overflows: add a multiple of the identity to it, or rescale the features")
    violation = _kkt_violation(g.detach(), y, c, scale, alpha.detach(), nu.detach(), free)
    if bool((violation > tol).any()):
        warnings.warn(f"the Crammer-Singer SVM dual did not meet its optimality (KKT) conditions to tol={tol} within "
                      f"max_iter={max_iter} interior-point iterations; its best estimate is used. Allow more "
                      "iterations, or look for support features that are huge or nearly identical",
                      RuntimeWarning, stacklevel=2)
    return alpha.to(gram.dtype)


def _interior_point(g: torch.Tensor, y: torch.Tensor, c: float, scale: torch.Tensor, max_iter: int,
                    tol: float) -> torch.Tensor:
    """Mehrotra's predictor-corrector on the QP with slacks ``S = c Y - A >= 0``, bound multipliers ``L >= 0`` and
    row-sum multipliers ``nu``. After every iteration the constraints with ``S > L`` (scaled) are taken as
    inactive and the QP is solved on that active set; a task stops at the first active set whose solution meets
    the KKT conditions to ``tol`` (the best test of convergence: it is the solution returned).

    Returns:
        (B, N, K) bool mask of the constraints ``A <= c Y`` found inactive (at least one per support example);
        for a task that never passed, the mask of the last iterate.
    """
    alpha, slack, lam = torch.zeros_like(y), torch.full_like(y, c), torch.ones_like(y)
    nu = y.new_zeros(y.shape[:2])
    # The iterates only guide the choice of active set (its solution is checked), so the Newton matrices may be
    # regularised: a ridge far below the data's scale keeps their Cholesky factorisations defined for a singular G.
    ridge = _NEWTON_RIDGE * g.diagonal(dim1=1, dim2=2).mean(-1).clamp_min(1.0)[:, None, None]
    found = torch.zeros(len(g), dtype=torch.bool, device=g.device)
    free = torch.zeros_like(y, dtype=torch.bool)  # no active set checked yet
    for iteration in range(max_iter):
        todo = (~found).nonzero().squeeze(1)  # the tasks still iterating
        gt, yt, st = g[todo], y[todo], scale[todo]
        a, s, lm, n = alpha[todo], slack[todo], lam[todo], nu[todo]
        residuals = (gt @ a - yt + n.unsqueeze(-1) + lm, a + s - c * yt, a.sum(-1))  # stationarity, bounds, rows
        mu = (s * lm).mean((1, 2))
        # Newton matrix per class: G + diag(L / S); inverses (b, K, N, N) and the Schur complement of the row sums.
        newton = gt.unsqueeze(1).repeat(1, y.shape[-1], 1, 1)
        newton.diagonal(dim1=-2, dim2=-1).add_((lm / s).mT + ridge[todo])
        inverse, info = _spd_inverse(newton)
        schur, info_schur = torch.linalg.cholesky_ex(inverse.sum(1))
        if bool((info != 0).any()) or bool((info_schur != 0).any()):
            raise FloatingPointError("the Crammer-Singer SVM dual: the Gram matrix is not positive semi-definite "
                                     "(not a Gram matrix, or not symmetric)")
        _, d_s, d_lm, _ = _newton_step(inverse, schur, residuals, s, lm, -s * lm)  # predictor: affine scaling
        step = _largest_step(s, d_s, lm, d_lm).clamp(max=1.0)
        sigma = (((s + step * d_s) * (lm + step * d_lm)).mean((1, 2)) / mu).clamp(max=1.0) ** 3  # Mehrotra
        target = (sigma * mu)[:, None, None] - s * lm - d_s * d_lm  # centred, second-order corrected
        d_a, d_s, d_lm, d_n = _newton_step(inverse, schur, residuals, s, lm, target)
        step = (_TO_BOUNDARY * _largest_step(s, d_s, lm, d_lm)).clamp(max=1.0)
        a, s, lm, n = a + step * d_a, s + step * d_s, lm + step * d_lm, n + step[:, :, 0] * d_n
        alpha[todo], slack[todo], lam[todo], nu[todo] = a, s, lm, n
        margin = s / c - lm / st[:, None, None]  # scaled: S is of the order of c, L of 1 + c max|G|
        inactive = (margin > 0) | F.one_hot(margin.argmax(-1), y.shape[-1]).bool()
        # Check once the duality measure is small (earlier guesses rarely pass) or at the last iteration, and only a
        # new active set: the one of the last failed check would fail again.
        near = ((s * lm).mean((1, 2)) / (c * st) <= _CHECK_BELOW) | (iteration == max_iter - 1)
        if bool(((inactive != free[todo]).any((1, 2)) & near).any()):
            free[todo] = inactive
            found[todo] = _kkt_violation(gt, yt, c, st, *_solve_on_active_set(gt, yt, c, inactive), inactive) <= tol
            if bool(found.all()):
                break
    return free


def _newton_step(inverse: torch.Tensor, schur: torch.Tensor, residuals: tuple[torch.Tensor, ...],
                 slack: torch.Tensor, lam: torch.Tensor, r_comp: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Newton direction (dA, dS, dL, dnu) of the KKT system for the complementarity target ``S dL + L dS = r_comp``:
    per class ``(G + L/S) dA_k + dnu = rhs_k`` (``inverse`` holds those matrices' inverses), and ``sum_k dA_k`` fixed by
    the row-sum residual through the Schur complement ``sum_k inverse_k`` (its Cholesky factor ``schur``)."""
    r_dual, r_bound, r_sum = residuals
    rhs = (-r_dual - (r_comp + lam * r_bound) / slack).mT.unsqueeze(-1)  # (B, K, N, 1)
    d_nu = torch.cholesky_solve((inverse @ rhs).sum(1) + r_sum.unsqueeze(-1), schur)  # (B, N, 1)
    d_alpha = (inverse @ (rhs - d_nu.unsqueeze(1))).squeeze(-1).mT
    d_slack = -r_bound - d_alpha
    return d_alpha, d_slack, (r_comp - lam * d_slack) / slack, d_nu.squeeze(-1)


def _largest_step(slack: torch.Tensor, d_slack: torch.Tensor, lam: torch.Tensor, d_lam: torch.Tensor) -> torch.Tensor:
    """(B, 1, 1) largest t with ``slack + t d_slack >= 0`` and ``lam + t d_lam >= 0`` (inf if any t is)."""
    ratios = torch.cat([torch.where(d_slack < 0, -slack / d_slack, torch.inf),
                        torch.where(d_lam < 0, -lam / d_lam, torch.inf)], dim=-1)
    return ratios.amin((1, 2), keepdim=True)


def _solve_on_active_set(g: torch.Tensor, y: torch.Tensor, c: float, free: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """The QP's solution when the constraints outside ``free`` hold with equality (``A = c Y`` there) and the others
    are dropped: per class ``k``, ``G_FF A_Fk + nu_F = Y_Fk - G_F,fixed c Y_fixed,k``, and ``sum_k A[n, k] = 0``
    fixes ``nu`` through its (N, N) Schur complement. Differentiable (``free`` is a constant).

    Returns:
        (B, N, K) solution ``A`` and (B, N) row-sum multipliers ``nu``.
    """
    f = free.to(g.dtype).mT  # (B, K, N)
    fixed = c * y.mT * (1.0 - f)  # the values held at their bound
    # Rows and columns of fixed entries replaced by the identity's (positive definite): the solution is zero there.
    masked = g.unsqueeze(1) * (f.unsqueeze(-1) * f.unsqueeze(-2)) + torch.diag_embed(1.0 - f)  # (B, K, N, N)
    inverse, info = _spd_inverse(masked)
    _check_factor(info)
    per_nu = inverse * f.unsqueeze(-2)  # free part of A[:, k] = base_k - per_nu_k @ nu
    base = (inverse @ (f * (y.mT - (g.unsqueeze(1) @ fixed.unsqueeze(-1)).squeeze(-1))).unsqueeze(-1)).squeeze(-1)
    schur, info = torch.linalg.cholesky_ex(per_nu.sum(1))  # (B, N, N), positive definite
    _check_factor(info)
    nu = torch.cholesky_solve((base.sum(1) + fixed.sum(1)).unsqueeze(-1), schur).squeeze(-1)  # rows sum to 0
    alpha = fixed + base - (per_nu @ nu[:, None, :, None]).squeeze(-1)
    return alpha.mT, nu


def _spd_inverse(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverses of a batch of symmetric positive definite matrices, ``L^-T L^-1`` from their Cholesky factors ``L``
    (differentiable), and the Cholesky ``info`` (non-zero where a matrix is not positive definite: its inverse is
    then meaningless)."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    inverse_factor = torch.linalg.solve_triangular(factor, eye, upper=False)
    return inverse_factor.mT @ inverse_factor, info


def _check_factor(info: torch.Tensor) -> None:
    if bool((info != 0).any()):
        raise FloatingPointError("the Crammer-Singer SVM dual has no unique solution: the Gram matrix is singular "
                                 "(linearly dependent support features); add a small multiple of the identity to it")


def _kkt_violation(g: torch.Tensor, y: torch.Tensor, c: float, scale: torch.Tensor, alpha: torch.Tensor,
                   nu: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """(B,) largest scaled violation of: stationarity on inactive constraints, a non-negative bound multiplier on
    active ones (dual feasibility; complementary slackness holds by construction), ``A <= c Y`` and the row sums."""
    grad = g @ alpha - y + nu.unsqueeze(-1)  # = -(bound multiplier) at the optimum
    stationarity = torch.where(free, grad.abs(), grad.clamp_min(0.0)).amax((1, 2)) / scale
    bound = (alpha - c * y).clamp_min(0.0).amax((1, 2)) / c
    rows = alpha.sum(-1).abs().amax(1) / c
    return torch.stack([stationarity, bound, rows]).amax(0)
