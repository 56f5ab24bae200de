"""MAML learner: predict leaves it untouched, batch-norm modes, divergence errors, variants, learning."""

from __future__ import annotations

import functools

import pytest
import synthetic
import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners import MAML, OuterOptimizer


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


template_batch = functools.partial(synthetic.template_batch, noise=0.7)  # this file's default


def make(seed: int = 0, **kwargs) -> MAML:
    torch.manual_seed(seed)
    return MAML(TinyNet(), n_way=5, **kwargs)


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("kwargs", [
    {}, {"inner_params": "head"}, {"learn_inner_lr": True}, {"bn_mode": "support"}, {"batched": True},
    {"first_order": True, "eval_inner_steps": 2},
])
def test_predict_leaves_learner_untouched(kwargs: dict) -> None:
    learner = make(**kwargs)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(template_batch(2, seed=5))  # non-trivial running stats and optimizer state
    learner.train()
    before = snapshot(learner)
    batch = template_batch(3, seed=1)
    logits = learner.predict(batch)
    with torch.no_grad():
        again = learner.predict(batch)
    assert logits.shape == (3, 15, 5) and not logits.requires_grad
    torch.testing.assert_close(logits, again, rtol=0, atol=0)
    after = snapshot(learner)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"predict changed {k}"
    assert learner.training and all(m.training for m in learner.modules())


def test_batched_and_sequential_predict_agree() -> None:
    batch = template_batch(4, seed=2)
    seq = make(batched=False, eval_inner_steps=3).predict(batch)
    bat = make(batched=True, eval_inner_steps=3).predict(batch)
    torch.testing.assert_close(bat, seq, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kwargs", [{}, {"first_order": True}, {"learn_inner_lr": True, "inner_steps": 2}])
def test_task_by_task_backward_equals_one_backward_of_the_mean_loss(kwargs: dict) -> None:
    """The sequential meta_backward frees each task's graph early; its gradient and loss must equal those
    of meta_loss().backward() over the whole batch (and of the batched path)."""
    batch = template_batch(3, seed=4)
    grads, losses = [], []
    for batched, per_task in [(False, True), (False, False), (True, False)]:
        learner = make(batched=batched, **kwargs).double()
        data = EpisodeBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y,
                            batch.classes, batch.episode_ids)
        if per_task:
            loss, logits = learner.meta_backward(data)
            assert logits.shape == (3, 15, 5) and not logits.requires_grad
        else:
            loss, _ = learner.meta_loss(data)
            loss.backward()
        grads.append([p.grad.clone() for p in learner.parameters()])
        losses.append(loss.detach())
    for other, loss in zip(grads[1:], losses[1:], strict=True):
        torch.testing.assert_close(loss, losses[0], rtol=1e-10, atol=0)
        for a, b in zip(grads[0], other, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


def test_divergent_inner_loop_raises() -> None:
    learner = make(inner_lr=1e30, eval_inner_steps=3)
    with pytest.raises(FloatingPointError, match="lower inner_lr"):
        learner.predict(template_batch(2, seed=0))
    with pytest.raises(FloatingPointError, match="inner_lr"):
        make(inner_lr=1e30, inner_steps=3).meta_loss(template_batch(2, seed=0))


def test_support_bn_mode_is_not_transductive() -> None:
    batch = template_batch(1, seed=3)
    changed = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x.clone(), batch.query_y,
                           batch.classes, batch.episode_ids)
    changed.query_x[0, -1] += 5.0
    support = make(bn_mode="support")
    a, b = support.predict(batch), support.predict(changed)
    torch.testing.assert_close(a[0, :-1], b[0, :-1], rtol=1e-5, atol=1e-6)
    transductive = make(bn_mode="transductive")
    a, b = transductive.predict(batch), transductive.predict(changed)
    assert (a[0, :-1] - b[0, :-1]).abs().max() > 1e-3


def test_anil_equals_maml_with_a_frozen_backbone() -> None:
    batch = template_batch(2, seed=4)
    anil = make(inner_params="head", inner_lr=0.3)
    torch.manual_seed(0)
    backbone = TinyNet()
    for p in backbone.parameters():
        p.requires_grad_(False)
    frozen = MAML(backbone, n_way=5, inner_lr=0.3)  # frozen before construction: not adapted
    assert anil.adapted == ["head.weight", "head.bias"] == frozen.adapted
    torch.testing.assert_close(anil.predict(batch), frozen.predict(batch), rtol=1e-5, atol=1e-6)
    loss_a, _ = anil.meta_loss(batch)
    loss_f, _ = frozen.meta_loss(batch)
    torch.testing.assert_close(loss_a, loss_f)


def test_meta_sgd_step_sizes_are_per_element_and_meta_trained() -> None:
    learner = make(learn_inner_lr=True, inner_lr=0.1)
    params = dict(learner.named_parameters())
    assert [lr.shape for lr in learner.inner_lrs] == [params[n].shape for n in learner.adapted]
    learner.configure_optimizer(OuterOptimizer(lr=1e-2))
    before = [lr.detach().clone() for lr in learner.inner_lrs]
    learner.meta_train_step(template_batch(2, seed=0))
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, learner.inner_lrs, strict=True))


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="n_way=3"):
        make().predict(template_batch(1, n_way=3, seed=0))
    with pytest.raises(ValueError, match="bn_mode"):
        make(bn_mode="running")
    with pytest.raises(TypeError, match="feature_dim"):
        MAML(nn.Flatten(), n_way=5)
    with pytest.raises(ValueError, match="batched"):
        make(batched="sometimes")


@pytest.mark.parametrize("kwargs", [{}, {"first_order": True}, {"inner_params": "head"}])
def test_learns_a_synthetic_task(kwargs: dict) -> None:
    learner = make(inner_lr=0.4, inner_steps=1, eval_inner_steps=3, **kwargs)
    learner.configure_optimizer(OuterOptimizer(lr=3e-3))
    test = template_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(30):
        learner.meta_train_step(template_batch(4, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.6 and accuracy > start + 0.1, (start, accuracy)


class _OwnBatchNorm(nn.BatchNorm2d):
    """A batch-norm layer with its own forward (as timm's BatchNormAct2d): it reads running statistics in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training)


def test_batch_stat_overrides_vouch_for_stock_layers_only() -> None:
    from fewshot.backbones import Conv4
    from fewshot.learners.gradient.functional import batch_stat_overrides

    conv4 = batch_stat_overrides(Conv4())
    assert conv4 is not None and len(conv4) == 8 and set(conv4.values()) == {None}
    assert all(k.endswith((".running_mean", ".running_var")) for k in conv4)
    stock = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False), nn.BatchNorm2d(2))
    assert batch_stat_overrides(stock) == {"2.running_mean": None, "2.running_var": None}
    assert batch_stat_overrides(nn.BatchNorm1d(3)) == {"running_mean": None, "running_var": None}
    for unknown in (TinyNet(), nn.Sequential(_OwnBatchNorm(2)), nn.Sequential(nn.SyncBatchNorm(2))):
        assert batch_stat_overrides(unknown) is None  # a class that may call F.batch_norm itself: the mode stays


@pytest.mark.parametrize("kwargs", [{}, {"first_order": True, "inner_steps": 2}, {"inner_params": "head"}])
def test_the_mode_free_path_equals_the_policy_exactly(kwargs: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stock backbone (Conv4) runs task by task without NormPolicy's mode: loss, logits, meta-gradient and
    predictions are bit for bit those of the mode, and the running statistics stay untouched."""
    import fewshot.learners.gradient.maml as maml_module
    from fewshot.backbones import Conv4

    batch = template_batch(3, seed=6)
    runs = []
    for mode_free in (True, False):
        if not mode_free:
            monkeypatch.setattr(maml_module, "batch_stat_overrides", lambda module: None)
        torch.manual_seed(0)
        learner = MAML(Conv4(hidden=8, input_size=8, pooled_blocks=3), n_way=5, batched=False, **kwargs)
        before = snapshot(learner)
        loss, logits = learner.meta_backward(batch)
        runs.append((loss, logits, [p.grad for p in learner.parameters()], learner.predict(batch)))
        assert all(torch.equal(v, before[k]) for k, v in snapshot(learner).items())
    (loss, logits, grads, predicted), (loss_m, logits_m, grads_m, predicted_m) = runs
    assert torch.equal(loss, loss_m) and torch.equal(logits, logits_m) and torch.equal(predicted, predicted_m)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_m, strict=True))
