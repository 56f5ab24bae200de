"""MetaOptNet: a multi-class SVM (or ridge-regression) head solved on every episode's support features."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.base import MetricLearner
from fewshot.learners.solver.qp import crammer_singer_dual
from fewshot.learners.solver.r2d2 import ridge_regression

__all__ = ["MetaOptNet"]

#: The SVM's Gram matrix gets this fraction of its mean diagonal added to its diagonal, so the dual has one
#: solution even when the support features are linearly dependent (more support examples than feature dimensions,
#: duplicate images): the SVM of the features extended by a private coordinate per support example, of length
#: 1% of a typical feature's.
GRAM_JITTER = 1e-4


class MetaOptNet(MetricLearner):
    """MetaOptNet (Lee, Maji, Ravichandran & Soatto, CVPR 2019, "Meta-Learning with Differentiable Convex
    Optimization").

    Per episode, a linear classifier is fitted on the support features and scores the queries, times a learned
    scale (the paper's gamma, initial value 1 as in the authors' code):

    - ``head="svm"`` (MetaOptNet-SVM): the Crammer-Singer multi-class SVM with constant ``svm_c``, solved in its
      dual (paper eq. 10) by :func:`~fewshot.learners.solver.qp.crammer_singer_dual`, a batched interior-point
      method whose solution is differentiated through its KKT conditions (implicit differentiation, as the paper).
      Query logits are ``sum_n A[n, k] <x_n, q>``. Unlike the paper (which stopped its QP solver after three
      iterations as a regulariser), the QP is solved to its optimality conditions; a solve that has not converged
      within ``qp_max_iter`` iterations warns.
    - ``head="ridge"`` (MetaOptNet-RR): ridge regression onto the one-hot labels with a fixed ``ridge_lambda``
      (paper eq. 11; the solve of :func:`~fewshot.learners.solver.r2d2.ridge_regression`).

    The head has no fixed size: any number of ways. All tasks of a batch are solved in one batched computation.

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``.
        head: ``"svm"`` or ``"ridge"``.
        svm_c: the SVM's regularisation constant C (> 0; paper: 0.1).
        ridge_lambda: the ridge head's lambda (> 0; paper: 50).
        scale: initial logit scale (> 0).
        learn_scale: learn the scale (the paper); ``False`` keeps it fixed.
        qp_max_iter: interior-point iterations at most per SVM solve (>= 1).
    """

    def __init__(self, backbone: nn.Module, *, head: Literal["svm", "ridge"] = "svm", svm_c: float = 0.1,
                 ridge_lambda: float = 50.0, scale: float = 1.0, learn_scale: bool = True,
                 qp_max_iter: int = 50) -> None:
        super().__init__()
        if head not in ("svm", "ridge"):
            raise ValueError(f"unknown head {head!r}; use 'svm' (MetaOptNet-SVM) or 'ridge' (MetaOptNet-RR)")
        for name, value in (("svm_c", svm_c), ("ridge_lambda", ridge_lambda), ("scale", scale)):
            if not (isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
                    and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        if not isinstance(learn_scale, bool):
            raise TypeError(f"learn_scale must be true or false, got {learn_scale!r}")
        if not (isinstance(qp_max_iter, int) and not isinstance(qp_max_iter, bool) and qp_max_iter >= 1):
            raise ValueError(f"qp_max_iter must be an integer >= 1, got {qp_max_iter!r}")
        self.backbone = backbone
        self.head: Literal["svm", "ridge"] = head
        self.svm_c, self.ridge_lambda, self.qp_max_iter = float(svm_c), float(ridge_lambda), qp_max_iter
        self.scale = nn.Parameter(torch.tensor(float(scale)), requires_grad=learn_scale)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Fit the head on the support features and score the queries.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits.
        """
        if self.head == "ridge":
            weights = ridge_regression(support, F.one_hot(support_y, n_way).to(support.dtype), self.ridge_lambda)
            return self.scale * (query @ weights)
        gram = support @ support.mT  # (B, S, S)
        jitter = GRAM_JITTER * gram.diagonal(dim1=-2, dim2=-1).mean(-1)
        gram = gram + jitter[:, None, None] * torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        dual = crammer_singer_dual(gram, support_y, n_way, self.svm_c, max_iter=self.qp_max_iter)  # (B, S, n_way)
        return self.scale * ((query @ support.mT) @ dual)
