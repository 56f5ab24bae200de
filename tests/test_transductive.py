"""The contract every transductive learner of fewshot/learners/finetune/ keeps: imbalanced query sets, no query
labels, nothing changed by predict, all tasks of a batch at once, and learning a synthetic task."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from synthetic import template_batch
from test_cli import fewshot, output
from transductive_cases import PosNeg, imbalanced_batch

from episodes import EpisodeBatch
from fewshot.learners import Learner, ProtoNet
from fewshot.learners.base import EmbeddingLearner
from fewshot.learners.finetune.bd_cspn import BDCSPN
from fewshot.learners.finetune.laplacianshot import LaplacianShot
from fewshot.learners.finetune.pt_map import PTMAP
from fewshot.learners.finetune.tim import TIM
from fewshot.learners.finetune.transductive_finetune import TransductiveFineTune

LEARNERS: dict[str, Callable[[], Learner]] = {
    "tim": lambda: TIM(PosNeg(), steps=100),
    "bdcspn": lambda: BDCSPN(PosNeg()),
    "laplacianshot": lambda: LaplacianShot(PosNeg(), feature_transform="L2N"),
    "ptmap": lambda: PTMAP(PosNeg()),
    "transductiveft": lambda: TransductiveFineTune(PosNeg(), steps=5),
}


@pytest.fixture(params=sorted(LEARNERS))
def learner(request: pytest.FixtureRequest) -> Learner:
    return LEARNERS[request.param]()


def test_is_marked_transductive(learner: Learner) -> None:
    assert learner.transductive is True


def test_imbalanced_query_set_gives_finite_logits(learner: Learner) -> None:
    batch = imbalanced_batch()
    logits = learner.predict(batch)
    assert logits.shape == (2, 18, 5) and bool(torch.isfinite(logits).all())


def test_query_labels_never_reach_predict(learner: Learner) -> None:
    batch = template_batch(2, n_query=4, seed=3)
    shuffled = EpisodeBatch(support_x=batch.support_x, support_y=batch.support_y, query_x=batch.query_x,
                            query_y=batch.query_y[:, torch.randperm(20)], classes=batch.classes,
                            episode_ids=batch.episode_ids)
    assert torch.equal(learner.predict(batch), learner.predict(shuffled))


def test_predict_changes_no_parameter_or_buffer(learner: Learner) -> None:
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.train()
    learner.predict(imbalanced_batch())
    assert learner.training
    after = learner.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_batch_of_tasks_equals_each_task_alone(learner: Learner) -> None:
    batch = template_batch(3, n_query=4, seed=5)
    together = learner.predict(batch)
    alone = torch.cat([learner.predict(batch.select(slice(i, i + 1))) for i in range(3)])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)


def test_predict_features_on_embeddings_equals_predict(learner: Learner) -> None:
    if not isinstance(learner, EmbeddingLearner):
        pytest.skip("fine-tunes its backbone: no features to score")
    batch = template_batch(2, n_query=3, seed=7)
    support, query = learner.embed_episodes(batch)
    torch.testing.assert_close(learner.predict_features(support, batch.support_y, query, 5), learner.predict(batch))


def test_learns_a_synthetic_task_well_above_chance(learner: Learner) -> None:
    """On the fixed features of noisy templates, each method is well above chance (20%) and no worse than
    nearest prototype by more than a few points."""
    batch = template_batch(20, n_shot=1, n_query=6, seed=11, noise=1.5)
    accuracy = (learner.predict(batch).argmax(-1) == batch.query_y).double().mean().item()
    nearest = (ProtoNet(PosNeg()).predict(batch).argmax(-1) == batch.query_y).double().mean().item()
    assert accuracy > 0.5 and accuracy > nearest - 0.05, (accuracy, nearest)


@pytest.mark.parametrize(("args", "message"), [
    (["learner=ptmap", "learner.alpha=0"], "alpha"),
    (["learner=tim", "learner.steps=-1"], "steps"),
])
def test_bad_learner_argument_through_the_cli_exits_with_status_2(args: list[str], message: str,
                                                                  tmp_path: Path) -> None:
    done = fewshot("train", *args, "trainer=pretrain", "progress=false", f"hydra.run.dir={tmp_path}", check=False)
    assert done.returncode == 2, output(done)[-2000:]
    last = output(done).strip().splitlines()[-1]
    assert message in last and "Traceback" not in output(done)
