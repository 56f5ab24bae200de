"""The transfer study (fewshot/training/transfer_study.py) end to end on tiny synthetic data, its last-stage
fine-tuning on cached maps against BackboneFineTune, the scratch batch-norm statistics, and the benchmark script's
refusal of bad flags."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from synthetic import TEMPLATES
from torch import nn

from episodes import EpisodeSampler, FewShotDataset
from episodes.domain_shift import shift_domain
from fewshot.backbones import create_backbone
from fewshot.backbones.conv4 import Conv4
from fewshot.evaluation.report import read_json
from fewshot.evaluation.transfer import write_transfer_report
from fewshot.learners import BackboneFineTune
from fewshot.learners.finetune.last_stage import LastStageFineTune
from fewshot.training.transfer_study import ARMS, StudySettings, calibrate_batch_norm, transfer_study

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import transfer_study as study_script


def _images(classes: range, per_class: int, seed: int) -> FewShotDataset:
    """16x16 uint8 images: each class an upsampled fixed template, plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = TEMPLATES[list(classes)].repeat_interleave(2, -1).repeat_interleave(2, -2)  # (K, 1, 16, 16)
    x = base.repeat_interleave(per_class, 0) + 0.5 * torch.randn(len(classes) * per_class, 1, 16, 16, generator=g)
    images = (torch.sigmoid(x) * 255).round().to(torch.uint8)
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    return FewShotDataset.from_tensors(images, labels, [f"c{k}" for k in classes], name=f"toy{seed}")


TINY = StudySettings(shots=(1, 2), n_query=2, episodes=4, pretrain_epochs=1, pretrain_batch_size=16, probe_steps=2,
                     finetune_steps=1, protonet_steps=2, protonet_way=5, protonet_shot=1, protonet_query=1,
                     maml_steps=1, maml_meta_batch=1, maml_shot=1, maml_query=1, maml_eval_steps=1)


def test_study_runs_end_to_end_and_writes_its_report(tmp_path: Path) -> None:
    train, test = _images(range(12), 6, seed=0), _images(range(12, 20), 6, seed=1)
    shifted = shift_domain(test)
    torch.manual_seed(0)
    backbone = Conv4(hidden=8, input_size=16)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    outcome = transfer_study(backbone, train, [test, shifted], settings=TINY)
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items())  # the caller's copy untouched
    names = [f"{arm} ({start})" for arm in ARMS for start in ("pretrained", "scratch")]
    assert [(r.test_dataset, r.spec.n_shot) for r in outcome.results] == [
        ("toy1", 1), ("toy1", 2), ("toy1+inverted+blur1", 1), ("toy1+inverted+blur1", 2)]
    for result in outcome.results:
        assert [learner.name for learner in result.learners] == names
        assert len(result.comparisons) == 12 * 11 // 2 and result.train_dataset == "toy0"
        assert all(len(learner.accuracies) == 4 for learner in result.learners)
    assert len(outcome.tests) == 4 * len(ARMS) and {t.pair.arm for t in outcome.tests} == set(ARMS)
    assert outcome.cpu_seconds.keys() == outcome.wall_seconds.keys() and "pretrain" in outcome.cpu_seconds
    assert len(outcome.pretrain_history) == 1

    written = write_transfer_report(tmp_path, outcome.results, outcome.tests, provenance={"seed": 0},
                                    title="tiny", notes=["a note"], extra={"settings": {"episodes": 4}})
    assert {p.name for p in written} >= {"results.json", "results.csv", "transfer.json", "results.md"}
    results, provenance = read_json(tmp_path / "results.json")
    assert provenance == {"seed": 0} and len(results) == 4
    assert torch.equal(results[0].learners[0].accuracies, outcome.results[0].learners[0].accuracies)
    document = json.loads((tmp_path / "transfer.json").read_text())
    assert document["family_size"] == 24 and document["settings"] == {"episodes": 4}
    assert [t["verdict"] for t in document["tests"]] == [t.verdict for t in outcome.tests]
    text = (tmp_path / "results.md").read_text()
    assert text.startswith("# tiny\n\n- a note\n") and text.count("| **negative transfer** (pretrained < scratch") == 2
    pytest.importorskip("matplotlib")
    assert (tmp_path / "accuracy_vs_shots_toy1.png").stat().st_size > 0
    assert (tmp_path / "accuracy_vs_shots_toy1_inverted_blur1.png").stat().st_size > 0


def test_study_refuses_episodes_the_data_cannot_give_before_training() -> None:
    train, test = _images(range(12), 6, seed=0), _images(range(12, 20), 6, seed=1)
    settings = dataclasses.replace(TINY, shots=(1, 5))  # 5 shots + 2 queries > 6 images per class
    with pytest.raises(ValueError, match="has only 6 images"):
        transfer_study(Conv4(hidden=8, input_size=16), train, [test], settings=settings)
    with pytest.raises(ValueError, match="distinct names"):
        transfer_study(Conv4(hidden=8, input_size=16), train, [test, test], settings=TINY)
    with pytest.raises(ValueError, match="shots must be distinct positive integers"):
        StudySettings(shots=(1, 1))


def test_last_stage_on_cached_maps_equals_backbone_finetune_last() -> None:
    data = _images(range(8), 6, seed=2)
    torch.manual_seed(0)
    backbone = calibrate_batch_norm(Conv4(hidden=8, input_size=16), data, chunk=16)
    batch = EpisodeSampler(data, n_way=4, n_shot=2, n_query=3, seed=1).batch(torch.arange(3))
    settings = {"steps": 4, "lr": 0.5, "backbone_lr_mult": 1.0, "weight_decay": 0.01}
    reference = BackboneFineTune(backbone, finetune_backbone="last", **settings).predict(batch)
    cached = LastStageFineTune(backbone, **settings)
    assert cached.map_shape == (8, 2, 2)
    logits = cached.predict(batch)
    torch.testing.assert_close(logits, reference, rtol=1e-5, atol=1e-5)
    assert float(reference.std()) > 0.1  # the fine-tuning moved the logits away from the zero head


def test_last_stage_refuses_a_backbone_that_is_more_than_its_stages() -> None:
    class Doubled(Conv4):
        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward_features(x)

    with pytest.raises(ValueError, match="not its stages"):
        LastStageFineTune(Doubled(hidden=4, input_size=16))
    with pytest.raises(ValueError, match="at least two `stages`"):
        LastStageFineTune(nn.Linear(3, 3))


def test_calibrate_batch_norm_sets_running_mean_to_the_data_mean() -> None:
    data = _images(range(4), 8, seed=3)  # 32 images, chunks of 8: the cumulative average of chunk means is exact
    torch.manual_seed(0)
    backbone = create_backbone("conv4", in_channels=1, hidden=4, input_size=16)
    weights = backbone.block1[0].weight.clone()
    calibrate_batch_norm(backbone, data, chunk=8)
    with torch.no_grad():
        conv = backbone.block1[0](data.to_float(data.images))  # (32, 4, 16, 16)
    torch.testing.assert_close(backbone.block1[1].running_mean, conv.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert torch.equal(backbone.block1[0].weight, weights) and not backbone.training
    assert backbone.block1[1].momentum == 0.1


def test_script_refuses_bad_flags_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        study_script.main(["--shots", "0", "5", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "shots must be distinct positive integers" in err
    assert not (tmp_path / "out").exists()
