"""Reptile: the outer update by hand (SGD and Adam inner loops, both task loops), the linear annealing, predict
leaves the learner untouched, learning a synthetic task, the paper's settings in the experiment rows."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from synthetic import template_batch
from test_maml import TinyNet, snapshot
from test_maml import template_batch as less_noisy_batch
from torch import nn

from episodes import EpisodeBatch
from fewshot.learners import OuterOptimizer
from fewshot.learners.gradient.reptile import Reptile


def double_batch(b: int, seed: int, n_shot: int = 2) -> EpisodeBatch:
    raw = template_batch(b, n_shot=n_shot, seed=seed)
    return EpisodeBatch(raw.support_x.double(), raw.support_y, raw.query_x.double(), raw.query_y, raw.classes,
                        raw.episode_ids)


def make(seed: int = 0, **kwargs) -> Reptile:
    torch.manual_seed(seed)
    return Reptile(TinyNet(hidden=4), n_way=5, **kwargs)


@pytest.mark.parametrize(("inner_optimizer", "batched"), [("sgd", False), ("adam", False), ("adam", True)])
def test_outer_update_is_theta_plus_epsilon_times_mean_adapted_minus_theta(inner_optimizer: str,
                                                                           batched: bool) -> None:
    """On a float64 copy of backbone + head per task (train-mode batch norm: each batch's statistics), 3 steps of
    torch.optim.SGD or torch.optim.Adam(betas=(0, 0.999)) on the support; one outer SGD step with lr epsilon
    must land on theta + epsilon * (mean of the adapted weights - theta), and the logged loss is the query
    cross-entropy of the adapted weights."""
    lr = 0.1 if inner_optimizer == "sgd" else 0.01
    learner = make(inner_lr=lr, inner_steps=3, inner_optimizer=inner_optimizer, batched=batched).double()
    batch = double_batch(3, seed=1)
    theta = {n: p.detach().clone() for n, p in learner.named_parameters()}
    buffers = {n: b.clone() for n, b in learner.named_buffers()}
    reached, query_losses = [], []
    for t in range(batch.n_tasks):
        net = copy.deepcopy(nn.Sequential(learner.backbone, learner.head)).train()
        opt = (torch.optim.SGD(net.parameters(), lr=lr) if inner_optimizer == "sgd"
               else torch.optim.Adam(net.parameters(), lr=lr, betas=(0.0, 0.999)))
        for _ in range(3):
            loss = F.cross_entropy(net(batch.support_x[t]), batch.support_y[t])
            opt.zero_grad()
            loss.backward()
            opt.step()
        reached.append(dict(zip(theta, (p.detach() for p in net.parameters()), strict=True)))
        with torch.no_grad():
            query_losses.append(F.cross_entropy(net(batch.query_x[t]), batch.query_y[t]))
    epsilon = 0.7
    learner.configure_optimizer(OuterOptimizer(name="sgd", lr=epsilon, momentum=0.0))
    metrics = learner.meta_train_step(batch)
    for name, p in learner.named_parameters():
        mean = torch.stack([r[name] for r in reached]).mean(0)
        # atol: a conv bias before batch norm has a gradient of rounding size (zero in exact arithmetic), which
        # Adam's normalisation magnifies to ~1e-11 differences between two implementations
        torch.testing.assert_close(p.detach(), theta[name] + epsilon * (mean - theta[name]), rtol=1e-10,
                                   atol=1e-9, msg=name)
    assert metrics["loss"] == pytest.approx(torch.stack(query_losses).mean().item(), rel=1e-10)
    assert all(torch.equal(b, buffers[n]) for n, b in learner.named_buffers())  # batch norm statistics unused


def test_linear_schedule_anneals_to_zero() -> None:
    opt, sched = OuterOptimizer(name="sgd", lr=2.0, momentum=0.0, schedule="linear", total_steps=4).build(
        [nn.Parameter(torch.zeros(1))])
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([2.0, 1.5, 1.0, 0.5, 0.0, 0.0])


@pytest.mark.parametrize("kwargs", [{}, {"bn_mode": "support"}, {"inner_optimizer": "sgd", "inner_lr": 0.1}])
def test_predict_and_meta_loss_leave_the_learner_untouched(kwargs: dict) -> None:
    learner = make(eval_inner_steps=4, **kwargs)
    learner.configure_optimizer(OuterOptimizer(name="sgd", lr=1.0, momentum=0.0))
    learner.meta_train_step(template_batch(2, seed=5))
    learner.zero_grad(set_to_none=True)
    learner.train()
    before = snapshot(learner)
    batch = template_batch(2, seed=1)
    logits = learner.predict(batch)
    with torch.no_grad():
        again = learner.predict(batch)
    loss, train_logits = learner.meta_loss(batch)
    assert logits.shape == train_logits.shape == (2, 15, 5) and not logits.requires_grad
    assert not loss.requires_grad and all(p.grad is None for p in learner.parameters())
    torch.testing.assert_close(logits, again, rtol=0, atol=0)
    assert not torch.allclose(logits, train_logits)  # 4 steps at test, 5 in training
    after = snapshot(learner)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert learner.training and all(m.training for m in learner.modules())
    assert learner.transductive == (kwargs.get("bn_mode", "transductive") == "transductive")


def test_learns_a_synthetic_task() -> None:
    """40 Reptile steps (epsilon 1 annealed linearly, 3-shot training tasks) give an initialisation from which
    3 test-time steps on one shot score well above where the random initialisation gets."""
    torch.manual_seed(0)
    learner = Reptile(TinyNet(), n_way=5, inner_lr=0.05, inner_steps=5, eval_inner_steps=3, inner_optimizer="sgd")
    learner.configure_optimizer(OuterOptimizer(name="sgd", lr=1.0, momentum=0.0, schedule="linear",
                                               total_steps=40))
    test = less_noisy_batch(20, seed=10_000)
    start = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    for step in range(40):
        learner.meta_train_step(less_noisy_batch(5, n_shot=3, seed=step))
    accuracy = (learner.predict(test).argmax(-1) == test.query_y).float().mean().item()
    assert accuracy > 0.7 and accuracy > start + 0.1, (start, accuracy)  # measured 0.62 -> 0.82


@pytest.mark.parametrize(("kwargs", "match"), [({"inner_steps": 0}, "inner_steps"), ({"inner_lr": 0.0}, "inner_lr"),
                                               ({"inner_optimizer": "rmsprop"}, "inner optimizer"),
                                               ({"betas": (0.0, 1.0)}, "betas"), ({"bn_mode": "running"}, "bn_mode")])
def test_invalid_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make(**kwargs)


def test_diverging_inner_loop_raises() -> None:
    with pytest.raises(FloatingPointError, match="Reptile inner loop diverged"):
        make(inner_lr=1e30, inner_optimizer="sgd", eval_inner_steps=3).predict(template_batch(1, seed=0))


def test_omniglot_row_states_the_papers_settings() -> None:
    with initialize_config_module("fewshot.configs", version_base="1.3"):
        cfg = compose("train", overrides=["experiment=reptile_omniglot_5w1s"])
    assert (cfg.learner.inner_lr, cfg.learner.inner_steps, cfg.learner.eval_inner_steps, cfg.learner.inner_optimizer,
            list(cfg.learner.betas)) == (0.001, 5, 50, "adam", [0.0, 0.999])
    assert (cfg.episode.train_n_shot, cfg.trainer.meta_batch, cfg.trainer.steps) == (10, 5, 100000)
    outer = cfg.trainer.optimizer
    assert (outer.name, outer.lr, outer.momentum, outer.schedule, outer.total_steps, outer.weight_decay) == (
        "sgd", 1.0, 0.0, "linear", 100000, 0.0)
