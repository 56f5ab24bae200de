"""LaplacianShot: the bound updates decrease the energy, the kNN affinity and the rectified prototypes against hand
computations, the base-class mean, the settings."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transductive_cases import PosNeg

from episodes import FewShotDataset
from fewshot.learners.finetune.laplacianshot import LaplacianShot, bound_updates, knn_affinity, laplacian_energy


def episodes(b: int, n_way: int, n_query: int, spread: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, n_way * n_query, 16) L2-normalised clustered queries and (b, n_way, 16) L2-normalised prototypes."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, n_way, 16, generator=g, dtype=torch.float64)
    query = centres.repeat_interleave(n_query, 1) + spread * torch.randn(b, n_way * n_query, 16, generator=g,
                                                                         dtype=torch.float64)
    protos = centres + spread * torch.randn(b, n_way, 16, generator=g, dtype=torch.float64)
    return F.normalize(query, dim=-1), F.normalize(protos, dim=-1)


@pytest.mark.parametrize(("n_way", "spread", "lam"), [(5, 0.5, 1.0), (5, 1.5, 1.0), (20, 1.0, 1.0), (5, 1.0, 0.5)])
def test_the_energy_never_increases_over_the_bound_updates(n_way: int, spread: float, lam: float) -> None:
    query, protos = episodes(8, n_way, 15, spread, seed=n_way)
    unary = torch.cdist(query, protos) ** 2
    affinity = knn_affinity(query, 3)
    logits, energies = bound_updates(unary, affinity, lam, 20)
    assert energies.shape == (21, 8)
    steps = energies[1:] - energies[:-1]
    assert bool((steps <= 1e-12).all()), steps.max()
    assert bool((energies[-1] < energies[0]).all())
    torch.testing.assert_close(energies[-1], laplacian_energy(logits.softmax(-1), unary, affinity, lam))


def test_knn_affinity_is_the_symmetrised_nearest_neighbour_graph() -> None:
    query = torch.tensor([[[0.0], [1.0], [3.0], [7.0]]])
    # knn=3: each point and its 2 nearest others. 0 -> {1, 2}; 1 -> {0, 2}; 3 -> {1, 0}... by distance:
    nearest = {0: {1, 2}, 1: {0, 2}, 2: {1, 0}, 3: {2, 1}}
    expected = torch.zeros(4, 4)
    for i, js in nearest.items():
        for j in js:
            expected[i, j] += 0.5
            expected[j, i] += 0.5
    torch.testing.assert_close(knn_affinity(query, 3)[0], expected)


def test_lam_zero_is_nearest_prototype_and_rectification_as_the_authors_code() -> None:
    g = torch.Generator().manual_seed(2)
    support, query = torch.rand(1, 6, 4, generator=g, dtype=torch.float64), torch.rand(1, 8, 4, generator=g,
                                                                                      dtype=torch.float64)
    support_y = torch.tensor([[0, 0, 1, 1, 2, 2]])
    learner = LaplacianShot(PosNeg(), lam=0.0, feature_transform="L2N")
    s, q = F.normalize(support, dim=-1)[0], F.normalize(query, dim=-1)[0]
    # The authors' proto_rectification, written out for one episode.
    shifted = q + (s.mean(0) - q.mean(0))
    samples = torch.cat([s, shifted])
    means = torch.stack([s[support_y[0] == c].mean(0) for c in range(3)])
    sims = F.cosine_similarity(samples[:, None], means[None], dim=2)
    predict, w = sims.argmax(1), (10 * sims).softmax(1)
    protos = torch.stack([(w[predict == c, c, None] * samples[predict == c]).mean(0) if (predict == c).any()
                          else means[c] for c in range(3)])
    expected = -torch.cdist(shifted, protos) ** 2
    torch.testing.assert_close(learner.predict_features(support, support_y, query, 3)[0], expected)


def test_cl2n_needs_the_base_class_mean() -> None:
    learner = LaplacianShot(PosNeg())
    with pytest.raises(ValueError, match="fit_base_classes"):
        learner.transform(torch.rand(2, 128))
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    data = FewShotDataset.from_tensors(images, torch.arange(3).repeat_interleave(2), list("abc"), name="base")
    learner.fit_base_classes(data)
    torch.testing.assert_close(learner.base_mean, PosNeg()(data.to_float(images)).mean(0))
    assert int(learner.base_count) == 6
    x = torch.rand(2, 128)
    torch.testing.assert_close(learner.transform(x), F.normalize(x - learner.base_mean, dim=-1))


@pytest.mark.parametrize(("kwargs", "match"), [({"lam": -1.0}, "lam"), ({"knn": 1}, "knn"),
                                               ({"iterations": -1}, "iterations"),
                                               ({"feature_transform": "UN"}, "feature_transform"),
                                               ({"chunk_size": 0}, "chunk_size")])
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LaplacianShot(PosNeg(), **kwargs)
    with pytest.raises(TypeError, match="feature_dim"):
        LaplacianShot(torch.nn.Identity())
