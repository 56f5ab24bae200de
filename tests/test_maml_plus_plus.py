"""MAML++: extras off == MAML bit for bit; every extra against a hand-written inner loop (float64); batched ==
sequential == finite differences with every extra on; the annealing schedules; predict changes nothing; resume."""

from __future__ import annotations

import functools
import itertools
from pathlib import Path

import pytest
import synthetic
import torch
import torch.nn.functional as F
from torch import nn

from episodes import EpisodeBatch, EpisodeSampler, FewShotDataset
from fewshot.learners import MAML, OuterOptimizer
from fewshot.learners.gradient.maml_plus_plus import MSL_FLOOR, MAMLPlusPlus
from fewshot.training.meta_train import TrainSettings, meta_train

OFF = {"multi_step_loss_steps": 0, "per_step_bn_weights": False, "per_step_bn_stats": False,
       "per_step_inner_lrs": False}
ALL = {"multi_step_loss_steps": 10, "per_step_bn_weights": True, "per_step_bn_stats": True,
       "per_step_inner_lrs": True}


class TinyConv(nn.Module):
    """Two conv -> BatchNorm -> ReLU -> maxpool blocks on 1x8x8 images; feature_dim = 16."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Flatten())
        self.feature_dim = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class LinearBN(nn.Module):
    """Flatten -> Linear(64, 6) -> BatchNorm1d -> tanh -> Linear(6, 5) -> BatchNorm1d: a backbone whose MAML++ inner
    loop is written out by hand below (two normalisations, so a layer's input depends on the state of the one
    before it)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.ModuleList([nn.Linear(64, 6), nn.Linear(6, 5)])
        self.bn = nn.ModuleList([nn.BatchNorm1d(6), nn.BatchNorm1d(5)])
        self.feature_dim = 5
        with torch.no_grad():
            for bn in self.bn:  # non-trivial starting statistics
                bn.running_mean.normal_()
                bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[1](self.fc[1](torch.tanh(self.bn[0](self.fc[0](x.flatten(1))))))


class NoNorm(nn.Module):
    """Flatten -> Linear(64, 4): no batch norm."""

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.feature_dim = nn.Linear(64, 4), 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


def double(batch: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(batch.support_x.double(), batch.support_y, batch.query_x.double(), batch.query_y,
                        batch.classes, batch.episode_ids)


def batch_of(b: int, seed: int, n_way: int = 3, n_query: int = 2) -> EpisodeBatch:
    return double(synthetic.template_batch(b, n_way=n_way, n_query=n_query, seed=seed, noise=0.7))


def make(backbone: type[nn.Module] = TinyConv, seed: int = 0, n_way: int = 3, cls: type[MAML] = MAMLPlusPlus,
         **kwargs) -> MAML:
    torch.manual_seed(seed)
    return cls(backbone(), n_way=n_way, **kwargs).double()


def grads(learner: nn.Module, loss: torch.Tensor) -> list[torch.Tensor]:
    params = [p for p in learner.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params))


def snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize(("batched", "kwargs"), [
    (False, {}), (True, {}), (False, {"bn_mode": "support", "first_order": True}),
    (True, {"bn_mode": "support", "first_order": True}), (False, {"inner_steps": 0, "eval_inner_steps": 2}),
])
def test_every_extra_off_is_maml_bit_for_bit(batched: bool, kwargs: dict) -> None:
    settings = {"inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 3, "batched": batched, **kwargs}
    batch = synthetic.template_batch(3, n_way=3, seed=1, noise=0.7)
    maml, plus = make(cls=MAML, **settings).float(), make(**settings, **OFF).float()
    assert [n for n, _ in maml.named_parameters()] == [n for n, _ in plus.named_parameters()]
    (loss_a, logits_a), (loss_b, logits_b) = maml.meta_loss(batch), plus.meta_loss(batch)
    assert torch.equal(loss_a, loss_b) and torch.equal(logits_a, logits_b)
    assert all(torch.equal(a, b) for a, b in zip(grads(maml, loss_a), grads(plus, loss_b), strict=True))
    (loss_a, logits_a), (loss_b, logits_b) = maml.meta_backward(batch), plus.meta_backward(batch)  # task by task
    assert torch.equal(loss_a, loss_b) and torch.equal(logits_a, logits_b)
    assert all(torch.equal(a.grad, b.grad) for a, b in zip(maml.parameters(), plus.parameters(), strict=True))
    assert torch.equal(maml.predict(batch), plus.predict(batch))
    assert plus.transductive == maml.transductive


# ------------------------------------------------------------------------- the inner loop written out by hand
def hand_task(learner: MAMLPlusPlus, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor, steps: int, *,
              running: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """MAML++ with every per-step table on the LinearBN backbone for one task: per layer z = h W^T + b, batch norm of
    z with the weight, bias and (with ``running``) statistics of the current state, tanh between the layers, a
    linear head; gradient steps with the per-step step sizes. Returns the query logits after every step and, per
    state, the support-set [mean, unbiased var] of each layer's z, (2 layers, 2, 6 channels zero-padded)."""
    named = dict(learner.named_parameters())
    params = dict(named)

    def forward(x: torch.Tensor, k: int, p: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h, zs = x.flatten(1), []
        for layer in range(2):
            z = h @ p[f"backbone.fc.{layer}.weight"].T + p[f"backbone.fc.{layer}.bias"]
            zs.append(z)
            weight, bias = named[f"step_bn.{2 * layer}"][k], named[f"step_bn.{2 * layer + 1}"][k]
            if running:
                mean, var = learner.step_stats[layer].mean[k], learner.step_stats[layer].var[k]
            else:
                mean, var = z.mean(0), z.var(0, unbiased=False)
            h = (z - mean) / torch.sqrt(var + 1e-5) * weight + bias
            h = torch.tanh(h) if layer == 0 else h
        return h @ p["head.weight"].T + p["head.bias"], zs

    def moments(k: int, p: dict[str, torch.Tensor]) -> torch.Tensor:
        zs = forward(sx, k, p)[1]
        return torch.stack([F.pad(torch.stack([z.mean(0), z.var(0)]), (0, 6 - z.shape[1])) for z in zs])

    outs, stats = [], [moments(0, params)]
    for k in range(steps):
        loss = F.cross_entropy(forward(sx, k, params)[0], sy)
        inner = torch.autograd.grad(loss, [params[n] for n in learner.adapted], create_graph=True)
        for i, (name, g) in enumerate(zip(learner.adapted, inner, strict=True)):
            params = {**params, name: params[name] - learner.step_lrs[i][k] * g}
        outs.append(forward(qx, k + 1, params)[0])
        stats.append(moments(k + 1, params))
    return outs, stats


def randomise(learner: MAMLPlusPlus) -> None:
    """Distinct per-state batch-norm weights, statistics and step sizes, so that using the wrong state shows."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for table in [*learner.step_bn, *learner.step_lrs]:
            table.copy_(table + 0.2 * torch.rand(table.shape, generator=g, dtype=table.dtype))
        for stats in learner.step_stats:
            stats.mean.normal_(generator=g)
            stats.var.uniform_(0.5, 2.0, generator=g)


def test_predict_uses_each_states_batch_norm_weights_statistics_and_step_sizes() -> None:
    learner = make(LinearBN, inner_lr=0.2, inner_steps=3, eval_inner_steps=3, **ALL)
    randomise(learner)
    stats = learner.step_stats[0]
    assert all(not torch.equal(stats.mean[i], stats.mean[j]) for i in range(4) for j in range(i))
    batch = batch_of(2, seed=3)
    expected = torch.stack([hand_task(learner, batch.support_x[i], batch.support_y[i], batch.query_x[i], 3,
                                      running=True)[0][-1] for i in range(2)])
    torch.testing.assert_close(learner.predict(batch), expected.detach(), rtol=1e-10, atol=1e-12)
    assert not learner.transductive


@pytest.mark.parametrize("batched", [False, True])
def test_meta_loss_running_statistics_and_meta_gradient_against_the_hand_inner_loop(batched: bool) -> None:
    """Multi-step loss mid-annealing, per-step batch-norm weights and step sizes (second order): loss and every
    meta-gradient as the hand loop; the running statistics of state k fold in the support moments at state k."""
    learner = make(LinearBN, inner_lr=0.2, inner_steps=3, eval_inner_steps=3, bn_momentum=0.3, batched=batched, **ALL)
    randomise(learner)
    learner.meta_step.fill_(4)
    weights = learner.loss_weights()
    early = max(1 - 4 / 10, MSL_FLOOR) / 3
    assert weights == pytest.approx([early, early, 1 - 2 * early], abs=1e-15) and sum(weights) == pytest.approx(1)
    before = [(stats.mean.clone(), stats.var.clone()) for stats in learner.step_stats]
    batch = batch_of(2, seed=5)
    hand_loss, hand_stats = 0.0, []
    for i in range(2):
        outs, stats = hand_task(learner, batch.support_x[i], batch.support_y[i], batch.query_x[i], 3, running=False)
        losses = [w * F.cross_entropy(o, batch.query_y[i]) for w, o in zip(weights, outs, strict=True)]
        hand_loss = hand_loss + sum(losses) / 2
        hand_stats.append(torch.stack(stats))
    loss, logits = learner.meta_loss(batch)
    torch.testing.assert_close(loss, hand_loss, rtol=1e-12, atol=0)
    assert logits.shape == (2, 6, 3)
    for a, b in zip(grads(learner, loss), grads(learner, hand_loss), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert all(lr.grad is None for lr in learner.step_lrs)  # autograd.grad above; now a real backward:
    learner.meta_loss(batch)[0].backward()
    assert all(bool((lr.grad != 0).all()) for lr in learner.step_lrs)  # every step's step size is meta-learned
    assert all(bool((table.grad != 0).any(-1).all()) for table in learner.step_bn)  # every state's weights too
    moments = torch.stack(hand_stats).mean(0)  # (states, layers, 2, 6): task mean of the support moments
    for layer, stats in enumerate(learner.step_stats):  # updated by both meta_loss calls in train mode
        width = stats.mean.shape[1]
        for j, (kept, start) in enumerate(((stats.mean, before[layer][0]), (stats.var, before[layer][1]))):
            once = 0.7 * start + 0.3 * moments[:, layer, j, :width]
            torch.testing.assert_close(kept, 0.7 * once + 0.3 * moments[:, layer, j, :width], rtol=1e-12, atol=1e-14)
    assert all(not torch.allclose(moments[i], moments[j]) for i in range(4) for j in range(i))


def test_batched_equals_sequential_and_finite_differences_with_every_extra_on() -> None:
    batch = batch_of(3, seed=2)
    settings = {"inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 2, "bn_mode": "support", **ALL}
    seq, bat, per_task = (make(batched=b, **settings) for b in (False, True, False))
    for learner in (seq, bat, per_task):
        learner.meta_step.fill_(3)  # mid-annealing: the loss of every step counts
    loss_s, loss_b = seq.meta_loss(batch)[0], bat.meta_loss(batch)[0]
    loss_t, _ = per_task.meta_backward(batch)
    torch.testing.assert_close(loss_b, loss_s, rtol=1e-12, atol=0)
    torch.testing.assert_close(loss_t, loss_s.detach(), rtol=1e-12, atol=0)
    grad_s, grad_b = grads(seq, loss_s), grads(bat, loss_b)
    trained = [p for p in per_task.parameters() if p.requires_grad]
    for a, b, c in zip(grad_s, grad_b, trained, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(c.grad, a, rtol=1e-8, atol=1e-12)
    for a, b in zip(seq.buffers(), bat.buffers(), strict=True):  # the running statistics folded in alike
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(bat.predict(batch), seq.predict(batch), rtol=1e-10, atol=1e-12)
    seq.eval()  # no statistics folded in while the loss is probed
    params = [p for p in seq.parameters() if p.requires_grad]
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype)
                 for i, p in enumerate(params)]
    values = []
    with torch.no_grad():
        for sign in (1, -1):
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * 1e-6 * d)
            with torch.enable_grad():
                values.append(seq.meta_loss(batch)[0].item())
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * 1e-6 * d)
    analytic = sum(float((g * d).sum()) for g, d in zip(grad_s, direction, strict=True))
    assert (values[0] - values[1]) / 2e-6 == pytest.approx(analytic, rel=1e-6)


def test_multi_step_loss_weights_follow_the_schedule_and_sum_to_one() -> None:
    learner = make(inner_steps=4, eval_inner_steps=4, multi_step_loss_steps=100)
    seen = []
    for t in range(0, 130):
        learner.meta_step.fill_(t)
        weights = learner.loss_weights()
        seen.append(weights)
        assert len(weights) == 4 and sum(weights) == pytest.approx(1, abs=1e-14)
        assert weights[0] == weights[1] == weights[2]
    assert seen[0] == [0.25] * 4  # uniform at the start
    assert seen[50] == pytest.approx([0.125, 0.125, 0.125, 0.625])  # non-final (1 - t/T)/N, final takes the rest
    assert seen[98] == pytest.approx([MSL_FLOOR / 4] * 3 + [1 - 3 * MSL_FLOOR / 4])  # floored
    assert all(w == [0.0, 0.0, 0.0, 1.0] for w in seen[100:])  # annealed: the final step's loss alone
    assert all(a[0] >= b[0] and a[3] <= b[3] for a, b in itertools.pairwise(seen))
    assert make(inner_steps=4, eval_inner_steps=4, multi_step_loss_steps=0).loss_weights() == [0, 0, 0, 1]


def test_derivative_order_annealing_switches_at_the_given_step() -> None:
    batch = batch_of(2, seed=4)
    settings = {"inner_lr": 0.3, "inner_steps": 2, "eval_inner_steps": 2}
    first, second = (grads(m, m.meta_loss(batch)[0]) for m in (make(cls=MAML, first_order=True, **settings),
                                                                 make(cls=MAML, **settings)))
    learner = make(first_order_steps=2, **settings, **OFF)
    for step, expected in ((0, first), (1, first), (2, second), (5, second)):
        learner.meta_step.fill_(step)
        assert learner.first_order_now() == (step < 2)
        assert all(torch.equal(a, b) for a, b in zip(grads(learner, learner.meta_loss(batch)[0]), expected,
                                                     strict=True)), step
    assert not all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_predict_changes_nothing_running_statistics_included() -> None:
    learner = make(inner_steps=2, eval_inner_steps=2, **ALL)
    learner.configure_optimizer(OuterOptimizer(lr=1e-3))
    learner.meta_train_step(batch_of(2, seed=5))
    assert int(learner.meta_step) == 1
    learner.train()
    before = snapshot(learner)
    batch = batch_of(3, seed=1)
    logits = learner.predict(batch)
    with torch.no_grad():
        again = learner.predict(batch)
    assert logits.shape == (3, 6, 3) and not logits.requires_grad and torch.equal(logits, again)
    after = snapshot(learner)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.training for m in learner.modules())
    changed = EpisodeBatch(batch.support_x, batch.support_y, batch.query_x.clone(), batch.query_y, batch.classes,
                           batch.episode_ids)
    changed.query_x[0, -1] += 5.0  # per-step running statistics: a query's logits ignore the other queries
    torch.testing.assert_close(learner.predict(changed)[0, :-1], logits[0, :-1], rtol=1e-12, atol=1e-12)


def tiny_sampler() -> EpisodeSampler:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (8, 1, 8, 8), generator=g, dtype=torch.uint8).repeat_interleave(4, 0)
    images = (images.int() + torch.randint(-20, 21, images.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    data = FewShotDataset.from_tensors(images, torch.arange(8).repeat_interleave(4), [f"c{i}" for i in range(8)],
                                       name="tiny", mean=(0.5,), std=(0.5,))
    return EpisodeSampler(data, n_way=3, n_shot=1, n_query=2, seed=0)


def test_resume_restores_the_annealing_state_exactly(tmp_path: Path) -> None:
    """Four steps straight == two steps, then a new learner resumed from the checkpoint for two more: the meta-step
    (multi-step-loss weights, derivative order) and the per-step statistics are in the state dict."""
    def run(steps: int, folder: Path) -> MAMLPlusPlus:
        learner = make(inner_steps=2, eval_inner_steps=2, first_order_steps=2,
                       **{**ALL, "multi_step_loss_steps": 3}).float()
        learner.configure_optimizer(OuterOptimizer(lr=1e-2))
        meta_train(learner, tiny_sampler(), settings=TrainSettings(steps=steps, meta_batch=2, checkpoint_every=1),
                   run_dir=folder, progress=False)
        return learner

    straight = run(4, tmp_path / "straight")
    run(2, tmp_path / "resumed")
    resumed = run(4, tmp_path / "resumed")
    assert "meta_step" in resumed.state_dict() and int(resumed.meta_step) == 4
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_invalid_arguments() -> None:
    build = functools.partial(make, inner_steps=2, eval_inner_steps=2)
    with pytest.raises(TypeError, match="per_step_bn_weights"):
        build(per_step_bn_weights=1)
    with pytest.raises(ValueError, match="multi_step_loss_steps"):
        build(multi_step_loss_steps=-1)
    with pytest.raises(ValueError, match="first_order_steps"):
        build(first_order_steps=2.5)
    with pytest.raises(ValueError, match="first_order=True"):
        build(first_order=True, first_order_steps=3)
    with pytest.raises(ValueError, match="bn_momentum"):
        build(bn_momentum=0.0)
    with pytest.raises(ValueError, match="inner_lr"):
        build(inner_lr=float("nan"))
    with pytest.raises(ValueError, match="eval_inner_steps=3 exceeds"):
        make(inner_steps=2, eval_inner_steps=3)
    with pytest.raises(ValueError, match="inner_steps >= 1"):
        make(inner_steps=0, eval_inner_steps=0)
    with pytest.raises(ValueError, match="has none"):
        make(NoNorm, inner_steps=2, eval_inner_steps=2)
    with pytest.raises(ValueError, match="bn_mode"):
        build(bn_mode="running")
    with pytest.raises(ValueError, match="n_way=5"):
        build().predict(batch_of(1, seed=0, n_way=5))
    build(**OFF, eval_inner_steps=3)  # without per-step tables more test steps are fine
