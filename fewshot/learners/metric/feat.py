"""FEAT: prototypes adapted to each task by a set-to-set transformer, then ProtoNet-style distances."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.base import EmbeddingLearner, MetaLearner
from fewshot.learners.metric.protonet import prototypes

__all__ = ["FEAT"]


def _sq_dist(x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(B, N, D), (B, K, D) -> (B, N, K) squared Euclidean distances, from exact differences."""
    return torch.cdist(x, centres, compute_mode="donot_use_mm_for_euclid_dist").square()


class FEAT(EmbeddingLearner, MetaLearner):
    """FEAT (Ye, Hu, Zhan and Sha, CVPR 2020, "Few-Shot Learning via Embedding Adaptation with Set-to-Set
    Functions").

    Each task's class prototypes (mean support embeddings) are adapted together by a one-head transformer
    block, as in the authors' code: ``T(P) = LayerNorm(P + Dropout(W_o Attention(P W_q, P W_k, P W_v) + b_o))``
    with ``Attention(Q, K, V) = Dropout(softmax(Q K^T / sqrt(D))) V``; a query is scored by
    ``-||query - T(P)_n||^2 / temperature``. Inductive: the transformer sees the prototypes only, never the
    queries.

    Training adds the paper's contrastive regulariser (:meth:`regularizer`), weighted by ``balance``: the support
    and query embeddings of each class form a set that the same transformer adapts; the mean of each adapted set
    is that class's centre, and every (unadapted) embedding is classified among the centres with
    ``-||x - c_n||^2 / temperature2`` (as ``model/models/feat.py`` of the authors' code).

    Args:
        backbone: module with ``feature_dim: int``; ``forward((N, C, H, W)) -> (N, feature_dim)``.
        temperature: divisor of the squared distances of the few-shot logits.
        temperature2: divisor of the squared distances of the regulariser's logits.
        balance: weight of the regulariser in :meth:`meta_loss` (0 turns it off).
        dropout: dropout on the attention's output projection (the authors use 0.5).
        attention_dropout: dropout on the attention weights (the authors use 0.1).
    """

    def __init__(self, backbone: nn.Module, *, temperature: float = 64.0, temperature2: float = 64.0,
                 balance: float = 0.01, dropout: float = 0.5, attention_dropout: float = 0.1) -> None:
        super().__init__()
        dim = getattr(backbone, "feature_dim", None)
        if not isinstance(dim, int) or dim < 1:
            raise TypeError("FEAT needs a backbone with a positive integer `feature_dim` (its output size), e.g. one "
                            "built with fewshot.backbones.create_backbone")
        if not (temperature > 0 and temperature2 > 0):
            raise ValueError(f"temperature and temperature2 must be positive, got {temperature} and {temperature2}")
        if not balance >= 0:
            raise ValueError(f"balance (the regulariser's weight) must be >= 0, got {balance}")
        if not (0 <= dropout < 1 and 0 <= attention_dropout < 1):
            raise ValueError(f"dropout and attention_dropout must be in [0, 1), got {dropout} and {attention_dropout}")
        self.backbone = backbone
        self.temperature, self.temperature2, self.balance = float(temperature), float(temperature2), float(balance)
        self.w_q, self.w_k, self.w_v = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        for w in (self.w_q, self.w_k, self.w_v):
            nn.init.normal_(w.weight, mean=0.0, std=math.sqrt(1.0 / dim))  # the authors' sqrt(2 / (d_model + d_k))
        self.w_o = nn.Linear(dim, dim)
        nn.init.xavier_normal_(self.w_o.weight)
        self.norm = nn.LayerNorm(dim)
        self.dropout, self.attention_dropout = nn.Dropout(dropout), nn.Dropout(attention_dropout)

    def adapt(self, x: torch.Tensor) -> torch.Tensor:
        """The set-to-set function: each of N sets of S vectors attends to its own set.

        Args:
            x: (N, S, D) sets.
        Returns:
            (N, S, D) adapted vectors.
        """
        attn = self.w_q(x) @ self.w_k(x).transpose(1, 2) / math.sqrt(x.shape[-1])  # (N, S, S)
        out = self.attention_dropout(attn.softmax(-1)) @ self.w_v(x)
        return self.norm(x + self.dropout(self.w_o(out)))

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Adapt each task's prototypes, score the queries against them.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) logits ``-||query - adapted prototype||^2 / temperature``.
        """
        adapted = self.adapt(prototypes(support, support_y, n_way))  # (B, n_way, D): queries never enter
        return -_sq_dist(query, adapted) / self.temperature

    def regularizer(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                    query_y: torch.Tensor, n_way: int) -> torch.Tensor:
        """The contrastive regulariser, averaged over every support and query embedding of every task.

        Args:
            support: (B, S, D); support_y: (B, S); query: (B, Q, D); query_y: (B, Q); every class has the same
                number of support and of query embeddings (as in every episode).
        Returns:
            scalar: cross-entropy of each embedding among the adapted class centres.
        """
        b, d = support.shape[0], support.shape[-1]
        x = torch.cat([support, query], 1)  # (B, S+Q, D)
        y = torch.cat([support_y, query_y], 1)
        order = y.argsort(dim=1, stable=True)  # group each class's embeddings (classes in label order)
        per_class = y.shape[1] // n_way
        expected = torch.arange(n_way, device=y.device).repeat_interleave(per_class)
        if y.shape[1] % n_way or not torch.equal(y.gather(1, order), expected.expand_as(y)):
            raise ValueError("FEAT's regulariser needs the same number of support and of query examples in every "
                             "class of an episode (labels 0..n_way-1): meta-train it on fixed-shape episodes, or "
                             "with balance=0 (no regulariser) on variable-shot ones; predict takes any shots")
        sets = x.gather(1, order.unsqueeze(-1).expand(-1, -1, d)).view(b * n_way, per_class, d)  # (B*n_way, K+Kq, D)
        centres = self.adapt(sets).mean(1).view(b, n_way, d)
        logits = -_sq_dist(x, centres) / self.temperature2  # (B, S+Q, n_way)
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Query cross-entropy plus ``balance`` times :meth:`regularizer`; support and query of every task go
        through the backbone in one call (in the module's current mode).

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) logits).
        """
        support, query = self.embed_episodes(batch)
        logits = self.predict_features(support, batch.support_y, query, batch.n_way)
        loss = F.cross_entropy(logits.flatten(0, 1), batch.query_y.flatten())
        if self.balance > 0:
            loss = loss + self.balance * self.regularizer(support, batch.support_y, query, batch.query_y, batch.n_way)
        return loss, logits
