"""Transductive fine-tuning: the learner untouched (batch norm included), the entropy term's effect, the inner loop's
two paths, the settings."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from synthetic import template_batch
from test_protonet import TinyNet

from episodes import EpisodeBatch
from fewshot.learners.finetune import BackboneFineTune
from fewshot.learners.finetune.transductive_finetune import TransductiveFineTune


def trained_tiny_net() -> TinyNet:
    """TinyNet with non-trivial batch-norm running statistics (a few forward passes in train mode)."""
    torch.manual_seed(0)
    net = TinyNet()
    with torch.no_grad():
        for seed in range(3):
            net(template_batch(4, seed=seed).query_x.flatten(0, 1))
    return net


def test_predict_leaves_parameters_and_buffers_untouched() -> None:
    learner = TransductiveFineTune(trained_tiny_net(), steps=5, lr=0.1)
    before = copy.deepcopy(learner.state_dict())
    learner.train()
    logits = learner.predict(template_batch(2, n_query=4, seed=1))
    assert logits.shape == (2, 20, 5) and learner.training and learner.backbone.training
    after = learner.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in learner.parameters())


def test_without_the_entropy_term_it_is_backbone_fine_tuning() -> None:
    net = trained_tiny_net()
    batch = template_batch(2, n_query=4, seed=2)
    settings = {"head": "cosine", "steps": 4, "lr": 0.05, "weight_decay": 0.01, "backbone_lr_mult": 0.1,
                "batched": False}
    plain = BackboneFineTune(net, **settings).predict(batch)
    sgd = TransductiveFineTune(net, entropy_weight=0.0, optimizer="sgd", **settings)  # BackboneFineTune's optimizer
    torch.testing.assert_close(sgd.predict(batch), plain, rtol=1e-5, atol=1e-5)


def test_adam_is_the_optimizer_that_runs() -> None:
    """The default optimizer is Adam: predict equals torch.optim.Adam run on a float64 copy of the backbone and a
    cosine head initialised from the support means, on support cross-entropy plus query entropy (one learning
    rate for all parameters), and differs from the momentum-SGD fit."""
    net = trained_tiny_net().double()
    raw = template_batch(1, n_query=3, seed=6)
    batch = EpisodeBatch(raw.support_x.double(), raw.support_y, raw.query_x.double(), raw.query_y, raw.classes,
                         raw.episode_ids)
    learner = TransductiveFineTune(net, steps=3, lr=0.01, batched=False)
    assert (learner.optimizer, learner.backbone_lr_mult, learner.weight_decay) == ("adam", 1.0, 0.0)
    copy_ = copy.deepcopy(net).eval()  # batch norm with the pretrained running statistics
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    with torch.no_grad():
        support = F.normalize(copy_(sx), dim=-1)
        weight = torch.stack([support[sy == c].mean(0) for c in range(5)], dim=1).requires_grad_()  # (D, n_way)
    opt = torch.optim.Adam([*copy_.parameters(), weight], lr=0.01)

    def logits(x: torch.Tensor) -> torch.Tensor:
        return 10.0 * F.normalize(copy_(x), dim=-1) @ F.normalize(weight, dim=0)

    for _ in range(3):
        out = logits(torch.cat([sx, qx]))
        p_query = out[5:].softmax(-1)
        loss = F.cross_entropy(out[:5], sy) - (p_query * p_query.log()).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    got = learner.predict(batch)[0]
    torch.testing.assert_close(got, logits(qx).detach(), rtol=1e-10, atol=1e-10)
    sgd = TransductiveFineTune(net, steps=3, lr=0.01, optimizer="sgd", batched=False).predict(batch)[0]
    assert (got - sgd).abs().max() > 1e-3


def test_the_entropy_term_makes_query_predictions_more_confident() -> None:
    net = trained_tiny_net()
    batch = template_batch(4, n_query=6, seed=3)

    def query_entropy(weight: float) -> float:
        logits = TransductiveFineTune(net, steps=10, lr=0.1, entropy_weight=weight).predict(batch)
        p = logits.softmax(-1)
        return -(p * p.log()).sum(-1).mean().item()

    assert query_entropy(1.0) < query_entropy(0.0) - 0.01


def test_vmapped_and_looped_episodes_agree() -> None:
    net = trained_tiny_net()
    batch = template_batch(3, n_query=3, seed=4)
    looped = TransductiveFineTune(net, steps=3, lr=0.1, batched=False).predict(batch)
    vmapped = TransductiveFineTune(net, steps=3, lr=0.1, batched=True).predict(batch)
    torch.testing.assert_close(vmapped, looped, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("kwargs", "match"), [({"entropy_weight": -1.0}, "entropy_weight"),
                                               ({"finetune_backbone": "none"}, "adapts the backbone"),
                                               ({"lr": 0.0}, "lr"), ({"head": "mlp"}, "head"),
                                               ({"optimizer": "rmsprop"}, "optimizer")])
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TransductiveFineTune(TinyNet(), **kwargs)
