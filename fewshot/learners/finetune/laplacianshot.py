"""LaplacianShot: nearest prototype with a Laplacian (kNN) regulariser over the query set, by bound updates."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.learners.feature_transform import TransformedFeatures
from fewshot.learners.metric.protonet import prototypes

__all__ = ["LaplacianShot", "bound_updates", "knn_affinity", "laplacian_energy"]


def knn_affinity(query: torch.Tensor, knn: int) -> torch.Tensor:
    """Symmetrised kNN affinity of each query set: ``(W + W^T) / 2`` with ``W[i, j] = 1`` when ``j`` is one of the
    ``knn - 1`` nearest other queries of ``i`` (the authors' code counts the point itself among its ``knn``).

    Args:
        query: (B, Q, D). Returns: (B, Q, Q), zero diagonal.
    """
    q = query.shape[1]
    dist = torch.cdist(query, query).diagonal_scatter(query.new_full((query.shape[0], q), float("inf")), 0, 1, 2)
    nearest = dist.topk(min(knn - 1, q - 1), dim=-1, largest=False).indices
    w = torch.zeros_like(dist).scatter_(-1, nearest, 1.0)
    return 0.5 * (w + w.transpose(1, 2))


def laplacian_energy(y: torch.Tensor, unary: torch.Tensor, affinity: torch.Tensor, lam: float) -> torch.Tensor:
    """(B,) relaxed LaplacianShot energy ``sum_q y_q.(log y_q + a_q) - lam/2 sum_{q,p} w_qp y_q.y_p``.

    Args:
        y: (B, Q, n_way) assignments (rows on the simplex); unary: (B, Q, n_way) squared distances ``a_q``;
        affinity: (B, Q, Q) symmetric ``w``.
    """
    entropy = (y * torch.log(y.clamp_min(1e-20))).sum((1, 2))
    return entropy + (y * unary).sum((1, 2)) - 0.5 * lam * (y * (affinity @ y)).sum((1, 2))


def bound_updates(unary: torch.Tensor, affinity: torch.Tensor, lam: float, iterations: int,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ziko et al.'s bound optimisation: ``Y <- softmax(-a + lam * W Y)``, from ``Y = softmax(-a)``.

    Each update minimises the bound obtained by linearising the (concave for a positive semi-definite ``W``)
    pairwise term at the current ``Y``; :func:`laplacian_energy` then never increases. (The entropy term is
    1-strongly convex, so the decrease also holds when ``lam * max(0, -lambda_min(W)) <= 1``.)

    Args:
        unary: (B, Q, n_way); affinity: (B, Q, Q) symmetric; iterations: number of updates.
    Returns:
        (B, Q, n_way) logits whose softmax is the final ``Y``, and the (iterations + 1, B) energy of the
        initial and of every updated ``Y``.
    """
    logits = -unary
    y = logits.softmax(-1)
    energies = [laplacian_energy(y, unary, affinity, lam)]
    for _ in range(iterations):
        logits = -unary + lam * affinity @ y
        y = logits.softmax(-1)
        energies.append(laplacian_energy(y, unary, affinity, lam))
    return logits, torch.stack(energies)


class LaplacianShot(TransformedFeatures):
    """LaplacianShot (Ziko, Dolz, Granger and Ben Ayed, ICML 2020, "Laplacian Regularized Few-Shot Learning").

    Transductive: the query set of each episode is used, unlabelled. A backbone pretrained as a classifier
    (``trainer=pretrain``), frozen. Features are transformed (``"L2N"``: L2-normalised; ``"CL2N"``: minus the
    base-class mean feature, then L2-normalised, as the paper); with ``rectify`` the prototypes are those of
    the authors' code (``--proto-rect``, the setting of their published results): queries shifted by
    ``mean(support) - mean(query)``, every support and shifted query sample assigned to its nearest support
    class mean (cosine), and each prototype the mean of ``softmax_c(10 cos(x, m_c)) * x`` over its samples.
    The unary term is the squared distance of each (shifted) query to each prototype; the pairwise term a
    kNN affinity of the query set (:func:`knn_affinity`, ``knn = 3`` as the authors' code); ``lam = 1.0`` is
    the code's default (the paper tunes it on validation episodes). :func:`bound_updates` runs ``iterations``
    (the code's maximum, 20) updates for every episode at once, without the code's early stop.

    ``base_mean`` (a buffer, saved in checkpoints) is set by :meth:`fit_base_classes`, which the supervised
    trainer calls after pretraining or after loading ``backbone_weights``; ``base_count`` is 0 until then.

    Assumes balanced query sets: the shift ``mean(support) - mean(query)`` of the rectification matches two
    class-balanced means (it still runs on imbalanced ones); the support mean is the mean of the class means, so
    variable-shot supports count every class equally.

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        lam: weight of the Laplacian term.
        knn: neighbours per query, counting the query itself (so ``knn - 1`` others).
        iterations: bound updates.
        feature_transform: ``"L2N"`` or ``"CL2N"``.
        rectify: prototypes rectified as above (else the support class means).
        chunk_size: images per backbone call in :meth:`fit_base_classes`.
    """

    transductive = True

    def __init__(self, backbone: nn.Module, *, lam: float = 1.0, knn: int = 3, iterations: int = 20,
                 feature_transform: Literal["L2N", "CL2N"] = "CL2N", rectify: bool = True,
                 chunk_size: int = 512) -> None:
        super().__init__()
        self.init_transform(backbone, feature_transform=feature_transform, chunk_size=chunk_size,
                            allowed=("L2N", "CL2N"))
        if not lam >= 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        if not isinstance(knn, int) or knn < 2 or not isinstance(iterations, int) or iterations < 0:
            raise ValueError(f"need an integer knn >= 2 and iterations >= 0, got {knn!r} and {iterations!r}")
        self.backbone = backbone
        self.lam, self.knn, self.iterations, self.rectify = lam, knn, iterations, bool(rectify)

    def class_prototypes(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor, n_way: int,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_way, D) prototypes and the (B, Q, D) queries they are compared with (shifted with ``rectify``)."""
        means = prototypes(support, support_y, n_way)
        if not self.rectify:
            return means, query
        query = query + (means.mean(1, keepdim=True) - query.mean(1, keepdim=True))  # class-balanced support mean
        samples = torch.cat([support, query], dim=1)  # (B, S + Q, D)
        cos = F.normalize(samples, dim=-1) @ F.normalize(means, dim=-1).transpose(1, 2)  # (B, S + Q, n_way)
        assigned = F.one_hot(cos.argmax(-1), n_way).to(samples.dtype)
        weighted = assigned * (10.0 * cos).softmax(-1)
        counts = assigned.sum(1).unsqueeze(-1)  # (B, n_way, 1)
        rectified = weighted.transpose(1, 2) @ samples / counts.clamp_min(1)
        return torch.where(counts > 0, rectified, means), query  # a class no sample was assigned to keeps its mean

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Laplacian-regularised assignments of every episode's queries.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``-a + lam * W Y`` of the last bound update (softmax: the final assignments).
        """
        support, query = self.transform(support), self.transform(query)
        protos, query = self.class_prototypes(support, support_y, query, n_way)
        unary = torch.cdist(query, protos, compute_mode="donot_use_mm_for_euclid_dist") ** 2
        logits, _ = bound_updates(unary, knn_affinity(query, self.knn), self.lam, self.iterations)
        return logits
