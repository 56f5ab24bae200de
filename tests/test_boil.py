"""BOIL (MAML with inner_params="body"): the head is frozen in the inner loop and the body moves (a step by hand),
the meta-gradient reaches the head (finite differences), the paper's settings in the Mini-ImageNet rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from test_inner_loop import TinyLinear, random_batch

from fewshot.learners import MAML


def make(**kwargs) -> MAML:
    torch.manual_seed(0)
    return MAML(TinyLinear(16, 5), n_way=3, inner_params="body", **kwargs).double()


def test_inner_step_moves_the_body_and_keeps_the_head() -> None:
    """One inner step by hand on flatten -> linear backbone (features z = x A^T + a) and head (W, c): only A and a
    take the support gradient step; the query is scored by the adapted body and the initial head."""
    learner = make(inner_lr=0.3, eval_inner_steps=1)
    assert learner.adapted == ["backbone.fc.weight", "backbone.fc.bias"]
    batch = random_batch(1, 3, 2, 2)
    x, y, qx = batch.support_x[0].flatten(1), batch.support_y[0], batch.query_x[0].flatten(1)
    a, a0 = learner.backbone.fc.weight.detach(), learner.backbone.fc.bias.detach()
    w, c = learner.head.weight.detach(), learner.head.bias.detach()
    z = x @ a.T + a0
    g = (torch.softmax(z @ w.T + c, -1) - F.one_hot(y, 3).double()) / len(y)  # d loss / d logits
    dz = g @ w
    a1, a01 = a - 0.3 * dz.T @ x, a0 - 0.3 * dz.sum(0)
    expected = (qx @ a1.T + a01) @ w.T + c  # the head as it was: frozen during adaptation
    torch.testing.assert_close(learner.predict(batch)[0], expected, rtol=1e-10, atol=1e-12)
    moved = (qx @ a.T + a0) @ w.T + c
    assert (expected - moved).abs().max() > 1e-3  # the body's step changed the logits


def test_meta_gradient_reaches_the_head_and_matches_finite_differences() -> None:
    learner = make(inner_lr=0.5, inner_steps=2)
    batch = random_batch(2, 3, 2, 2)
    loss, _ = learner.meta_loss(batch)
    params = list(learner.parameters())
    grads = torch.autograd.grad(loss, params)
    head_grad = dict(zip([n for n, _ in learner.named_parameters()], grads, strict=True))["head.weight"]
    assert head_grad.abs().max() > 1e-3
    gen = torch.Generator().manual_seed(1)
    head = {id(learner.head.weight), id(learner.head.bias)}
    for only_head in (True, False):  # along the head's parameters alone, then along all of them
        direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) if not only_head or id(p) in head
                     else torch.zeros_like(p) for p in params]
        analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.add_(sign * 1e-6 * d)
            values.append(learner.meta_loss(batch)[0].detach())
            with torch.no_grad():
                for p, d in zip(params, direction, strict=True):
                    p.sub_(sign * 1e-6 * d)
        numeric = (values[0] - values[1]) / 2e-6
        assert abs(float(analytic - numeric)) <= 1e-6 * abs(float(numeric)) + 1e-10


def test_unknown_inner_params_is_refused() -> None:
    with pytest.raises(ValueError, match="inner_params"):
        MAML(TinyLinear(16, 5), n_way=3, inner_params="backbone")  # type: ignore[arg-type]


def test_mini_imagenet_rows_state_the_authors_settings() -> None:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=boil_mini_imagenet_5w5s"])
    assert (cfg.learner.inner_params, cfg.learner.inner_lr, cfg.learner.inner_steps, cfg.learner.eval_inner_steps,
            cfg.learner.first_order, cfg.learner.bn_mode) == ("body", 0.5, 1, 1, False, "transductive")
    assert (cfg.backbone.hidden, cfg.trainer.meta_batch, cfg.trainer.steps, cfg.episode.n_shot) == (64, 4, 30000, 5)
