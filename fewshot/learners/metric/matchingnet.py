"""Matching networks: a query's label distribution is a cosine-attention-weighted sum of support labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners.base import EmbeddingLearner, MetaLearner

__all__ = ["MatchingNet"]


class MatchingNet(EmbeddingLearner, MetaLearner):
    """Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu and Wierstra, NeurIPS 2016, "Matching
    Networks for One Shot Learning").

    ``P(y = c | x, S) = sum_i a(x, x_i) [y_i = c]`` with ``a(x, x_i) = softmax_i(cos(f(x), g(x_i)) / temperature)``
    over the support set S. :meth:`predict_features` returns ``log P`` (log-probabilities, not raw scores): the
    rows are already normalised, so ``softmax(logits) = P``, cross-entropy on them is the paper's ``-log P`` and
    argmax picks the class of largest attention mass. It is computed exactly as ``logsumexp`` of the scaled
    cosines of each class's support items minus ``logsumexp`` over the whole support set.

    Without full-context embeddings (``fce=False``) f = g = the backbone (the default :meth:`embed`). With
    ``fce=True`` (the paper's appendix): ``g(x_i, S) = g'(x_i) + h_fwd_i + h_bwd_i``, a bidirectional LSTM
    (hidden size D) read over the support set in its given (class-major) order, so a support embedding
    depends on the other support items but never on the queries; and ``f(x, S)`` is an attention LSTM run
    for ``fce_steps`` (the paper's K) processing steps on each query alone:
    ``h^_k, c_k = LSTM([f'(x), r_{k-1}], h_{k-1}, c_{k-1})``, ``h_k = h^_k + f'(x)``,
    ``r_k = sum_i softmax_i(h_k . g(x_i)) g(x_i)``, f(x, S) = h_K, from zero h, r, c (the paper's LSTM hidden
    state ``[h, r]`` enters here as input ``r`` beside the hidden ``h``: the same gate function). Queries are
    never mixed (inductive). Neither LSTM depends on the number of ways or shots: a model trained on one
    episode shape runs on any other.

    Args:
        backbone: module with ``forward((N, C, H, W)) -> (N, D)``; with ``fce`` it must say D as ``feature_dim``.
        fce: use full-context embeddings.
        fce_steps: K, the attention LSTM's processing steps (``fce`` only).
        temperature: positive divisor of the cosine similarities before the softmax (the paper: 1).
    """

    def __init__(self, backbone: nn.Module, *, fce: bool = False, fce_steps: int = 5,
                 temperature: float = 1.0) -> None:
        super().__init__()
        if not isinstance(fce, bool):
            raise TypeError(f"fce must be true or false, got {fce!r}")
        if isinstance(fce_steps, bool) or not isinstance(fce_steps, int) or fce_steps < 1:
            raise ValueError(f"fce_steps (the attention LSTM's processing steps K) must be an integer >= 1, "
                             f"got {fce_steps!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.backbone = backbone
        self.fce = fce
        self.fce_steps = fce_steps
        self.temperature = temperature
        if fce:
            dim = getattr(backbone, "feature_dim", None)
            if not isinstance(dim, int) or dim < 1:
                raise TypeError(f"fce=True sizes its LSTMs by the backbone's feature_dim, but "
                                f"{type(backbone).__name__} has none; use a fewshot backbone or set feature_dim")
            self.support_lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)  # g
            self.query_lstm = nn.LSTMCell(2 * dim, dim)  # f: input [f'(x), r], hidden h

    def contextual(self, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Full-context embeddings (identity without ``fce``).

        Args:
            support: (B, S, D) backbone features of the support set, in episode order; query: (B, Q, D).
        Returns:
            g(support) (B, S, D) and f(query) (B, Q, D).
        """
        if not self.fce:
            return support, query
        b, q, d = query.shape
        both, _ = self.support_lstm(support)  # (B, S, 2D): forward and backward hidden states
        g = support + both[..., :d] + both[..., d:]
        x = query.reshape(b * q, d)  # every query row is its own LSTM sequence: no query sees another
        h, c, r = x.new_zeros(b * q, d), x.new_zeros(b * q, d), x.new_zeros(b, q, d)
        for _ in range(self.fce_steps):
            h_hat, c = self.query_lstm(torch.cat([x, r.reshape(b * q, d)], dim=1), (h, c))
            h = h_hat + x
            attention = torch.softmax(h.view(b, q, d) @ g.transpose(1, 2), dim=-1)  # (B, Q, S), per task
            r = attention @ g
        return g, h.view(b, q, d)

    def predict_features(self, support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                         n_way: int) -> torch.Tensor:
        """Attend from each query over its task's support set.

        Args:
            support: (B, S, D); support_y: (B, S) labels in [0, n_way); query: (B, Q, D).
        Returns:
            (B, Q, n_way) ``log P(y = c | x, S)``; ``-inf`` for a class without support items.
        """
        g, f = self.contextual(support, query)
        scores = F.normalize(f, dim=-1) @ F.normalize(g, dim=-1).transpose(1, 2) / self.temperature  # (B, Q, S)
        member = F.one_hot(support_y, n_way).to(torch.bool)  # (B, S, n_way)
        masked = scores.unsqueeze(-1).masked_fill(~member.unsqueeze(1), float("-inf"))  # (B, Q, S, n_way)
        return torch.logsumexp(masked, dim=2) - torch.logsumexp(scores, dim=2, keepdim=True)

    def meta_loss(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """``-log P`` of the true query labels over all tasks; every image of the batch goes through the
        backbone in one call (in the module's current mode).

        Returns:
            (scalar loss, (B, n_way*n_query, n_way) log-probabilities).
        """
        support, query = self.embed_episodes(batch)
        logits = self.predict_features(support, batch.support_y, query, batch.n_way)
        return F.nll_loss(logits.flatten(0, 1), batch.query_y.flatten()), logits
