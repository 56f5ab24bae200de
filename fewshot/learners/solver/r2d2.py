"""R2D2: a ridge-regression head solved in closed form on every episode's support features."""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import MetricLearner

__all__ = ["R2D2", "ridge_regression"]

Form = Literal["auto", "dual", "primal"]


def ridge_regression(support: torch.Tensor, targets: torch.Tensor, lam: torch.Tensor | float, *,
                     form: Form = "auto") -> torch.Tensor:
    """Ridge-regression weights of every task, ``W = argmin ||X W - Y||^2 + lam ||W||^2``, in one batched solve.

    Two equal closed forms: the dual (Woodbury) ``W = X^T (X X^T + lam I)^-1 Y``, an (S, S) system, and the primal
    ``W = (X^T X + lam I)^-1 X^T Y``, a (D, D) one. ``form="auto"`` takes the dual when there are fewer support
    examples than feature dimensions (S < D), the primal otherwise. The system is solved by Cholesky
    factorisation, differentiable in ``X``, ``Y`` and ``lam``.

    A system that is singular or too ill-conditioned for the dtype (``lam`` near zero with duplicate or collinear
    support features; detected from the Cholesky factor, whose diagonal bounds the condition number from below)
    warns and is solved with ``lam`` raised, for the tasks concerned, by ``trace * sqrt(eps)`` of their system
    (``eps`` the dtype's machine epsilon): a tiny ridge that makes the solve accurate.

    Args:
        support: (B, S, D) features X; targets: (B, S, K) regression targets Y (one-hot labels for R2D2).
        lam: the ridge (>= 0), a float or 0-dim tensor.
        form: ``"auto"``, ``"dual"`` or ``"primal"``.
    Returns:
        (B, D, K) weights W.
    Raises:
        FloatingPointError: the features or ``lam`` are not finite, or the system stays singular after the fallback.
    Warns:
        RuntimeWarning: a task's system was singular or ill-conditioned (the fallback was taken).
    """
    if form not in ("auto", "dual", "primal"):
        raise ValueError(f"unknown form {form!r}; use 'auto', 'dual' or 'primal'")
    if support.dim() != 3 or targets.dim() != 3 or targets.shape[:2] != support.shape[:2]:
        raise ValueError(f"need support (B, S, D) and targets (B, S, K), got {tuple(support.shape)} and "
                         f"{tuple(targets.shape)}")
    lam = torch.as_tensor(lam, dtype=support.dtype, device=support.device)
    if not (bool(torch.isfinite(support).all()) and bool(torch.isfinite(lam))):
        raise FloatingPointError("ridge regression: the support features or lambda hold NaN or infinity (the "
                                 "backbone diverged); lower the learning rate or use gradient clipping")
    if bool(lam < 0):
        raise ValueError(f"the ridge lambda must be >= 0, got {lam.item()}")
    s, d = support.shape[1:]
    dual = form == "dual" or (form == "auto" and s < d)
    if dual:
        system, rhs = support @ support.mT, targets
    else:
        system, rhs = support.mT @ support, support.mT @ targets
    eye = torch.eye(system.shape[-1], dtype=system.dtype, device=system.device)
    system = system + lam * eye
    factor, bad = _cholesky(system)
    if bool(bad.any()):
        warnings.warn("ridge regression: the system is singular or ill-conditioned for its dtype (lambda near zero "
                      "with duplicate or collinear support features); solved with lambda raised by trace*sqrt(eps) "
                      "for those tasks. Raise lambda if this repeats", RuntimeWarning, stacklevel=2)
        raise_by = system.detach().diagonal(dim1=-2, dim2=-1).sum(-1) * math.sqrt(torch.finfo(system.dtype).eps)
        factor, bad = _cholesky(system + (bad * raise_by)[:, None, None] * eye)
        if bool(bad.any()):
            raise FloatingPointError("ridge regression: the system stays singular after raising lambda; the support "
                                     "features are degenerate (e.g. all zero)")
    solution = torch.cholesky_solve(rhs, factor)
    return support.mT @ solution if dual else solution


def _cholesky(system: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factor of a batch of symmetric matrices, and the (B,) mask of those that are not positive definite
    or whose condition number exceeds ``0.1 / eps`` (the solve would keep less than one correct digit; estimated as
    the squared ratio of the factor's largest to smallest diagonal entry, a lower bound)."""
    factor, info = torch.linalg.cholesky_ex(system)
    diag = factor.detach().diagonal(dim1=-2, dim2=-1)
    ratio = (diag.amin(-1) / diag.amax(-1)) ** 2  # <= 1 / condition number; NaN where the factor failed
    return factor, (info != 0) | ~(ratio > 10 * torch.finfo(system.dtype).eps)


class R2D2(MetricLearner):
    """R2D2 (Bertinetto, Henriques, Torr & Vedaldi, ICLR 2019, "Meta-learning with differentiable closed-form
    solvers").

    Per episode, a ridge regression from the support features to the one-hot support labels,
    ``W = X^T (X X^T + lambda I)^-1 Y`` (:func:`ridge_regression`: the Woodbury form when there are fewer support
    examples than feature dimensions, the primal form otherwise), scores the queries with ``scale * (Q W)``.
    ``lambda`` (kept positive as ``exp(log_lambda)``) and ``scale`` (the paper's alpha) are learned with the backbone
    by back-propagating the query cross-entropy through the solve. The head has no fixed size: any number of ways.
    All tasks of a batch are solved in one batched computation.

    Not included: the paper's offset beta, one number added to every logit: the softmax cross-entropy and the
    predicted class do not depend on it, so it would never be trained (its gradient is zero). Nor the paper's
    logistic-regression variant (LR-D2), or the bias column and 1/sqrt(N) scaling of X and Y in the authors' code
    (the learned lambda and scale absorb the scaling).

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        lam: initial ridge lambda (> 0).
        learn_lambda: learn lambda (the paper); ``False`` keeps it fixed.
        scale: initial logit scale (> 0), learned.
        form: ``"auto"``, ``"dual"`` (Woodbury) or ``"primal"``: which closed form solves the ridge system.
    """

    def __init__(self, backbone: nn.Module, *, lam: float = 1.0, learn_lambda: bool = True, scale: float = 10.0,
                 form: Form = "auto") -> None:
        super().__init__()
        for name, value in (("lam", lam), ("scale", scale)):
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(learn_lambda, bool):
            raise TypeError(f"learn_lambda must be true or false, got {learn_lambda!r}")
        if form not in ("auto", "dual", "primal"):
            raise ValueError(f"unknown form {form!r}; use 'auto', 'dual' or 'primal'")
        self.backbone = backbone
        self.form: Form = form
        self.log_lambda = nn.Parameter(torch.tensor(math.log(lam)), requires_grad=learn_lambda)
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Fit the ridge head on the support features and score the queries.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``scale * query @ W``.
        """
        weights = ridge_regression(support, F.one_hot(support_y, n_way).to(support.dtype),
                                   self.log_lambda.exp().to(support.dtype), form=self.form)
        return self.scale * (query @ weights)
