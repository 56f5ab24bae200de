"""Reports: JSON round trip with provenance, CSV rows, markdown tables of merged results, PNG plots."""

from __future__ import annotations

import csv
import logging
import os
import re
import sys
from pathlib import Path

import pytest
import torch

import fewshot
from fewshot.evaluation import (
    Comparison,
    EpisodeSpec,
    EvaluationResult,
    LearnerResult,
    collect_provenance,
    csv_rows,
    markdown_table,
    paired_comparison,
    plot_accuracy_vs_shots,
    plot_learning_curve,
    read_json,
    write_csv,
    write_json,
    write_markdown,
)
from fewshot.evaluation.report import CSV_COLUMNS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_result(scores: dict[str, tuple[float, float]], *, n_shot: int = 1, dataset: str = "omniglot/vinyals/test",
                train_dataset: str | None = None) -> EvaluationResult:
    """A result with given (mean, ci95) per learner and deterministic per-episode accuracies."""
    learners = []
    for i, (name, (mean, ci95)) in enumerate(scores.items()):
        accuracies = torch.linspace(0, 1, 4, dtype=torch.float64) * 0.1 + 0.01 * i
        learners.append(LearnerResult(name, accuracies, mean, ci95))
    comparisons = tuple(
        Comparison(a.name, b.name, paired_comparison(a.accuracies, b.accuracies, permutations=10, seed=0))
        for j, a in enumerate(learners) for b in learners[j + 1:])
    spec = EpisodeSpec(dataset=dataset, n_way=5, n_shot=n_shot, n_query=15, episodes=4, seed=0)
    return EvaluationResult(spec, tuple(learners), comparisons, train_dataset, dataset)


def test_json_round_trip_keeps_every_field_and_provenance(tmp_path: Path) -> None:
    results = [make_result({"protonet": (0.988, 0.0021), "maml": (0.95, 0.004)}),
               make_result({"protonet": (0.997, 0.001)}, n_shot=5, train_dataset="omniglot/vinyals/trainval")]
    info = collect_provenance(config={"learner": {"name": "protonet"}, "episodes": 4}, seed=0, device="cpu")
    path = write_json(tmp_path / "out" / "eval.json", results, provenance=info)
    loaded, provenance = read_json(path)
    assert [r.to_dict() for r in loaded] == [r.to_dict() for r in results]
    assert loaded[0].learners[0].accuracies.dtype == torch.float64
    assert loaded[0].comparisons[0].result == results[0].comparisons[0].result
    assert provenance == info
    assert provenance["config"] == {"learner": {"name": "protonet"}, "episodes": 4}
    assert provenance["fewshot_version"] == fewshot.__version__
    assert provenance["torch_version"] == torch.__version__
    assert provenance["git_revision"] is None or re.fullmatch(r"[0-9a-f]{40}", provenance["git_revision"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", provenance["timestamp"])
    assert [p.name for p in path.parent.iterdir()] == ["eval.json"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a temporary file


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = write_json(tmp_path / "eval.json", make_result({"protonet": (0.9, 0.01)}))
    before = path.read_bytes()
    with pytest.raises(TypeError):
        write_json(path, make_result({"maml": (0.8, 0.01)}), provenance={"config": object()})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]


def test_read_json_rejects_other_files(tmp_path: Path) -> None:
    other = tmp_path / "other.json"
    other.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not a fewshot evaluation file"):
        read_json(other)


def test_csv_has_one_row_per_learner_per_setting(tmp_path: Path) -> None:
    results = [make_result({"protonet": (0.988, 0.0021), "maml": (0.95, 0.004)}),
               make_result({"protonet": (0.997, 0.001)}, n_shot=5, train_dataset="omniglot/vinyals/trainval")]
    path = write_csv(tmp_path / "eval.csv", results)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    assert [(r["method"], r["n_shot"], r["train_dataset"]) for r in rows] == [
        ("protonet", "1", ""), ("maml", "1", ""), ("protonet", "5", "omniglot/vinyals/trainval")]
    assert float(rows[0]["mean"]) == 0.988 and float(rows[0]["ci95"]) == 0.0021
    assert len(csv_rows(results[0])) == 2


def test_markdown_cells_are_percent_with_ci() -> None:
    table = markdown_table(make_result({"protonet": (0.988, 0.0021), "maml": (0.9512345, 0.00444)}))
    assert table.splitlines() == [
        "| method | 5-way 1-shot |",
        "|---|---|",
        "| protonet | 98.80 ± 0.21 |",
        "| maml | 95.12 ± 0.44 |",
    ]
    assert "| protonet | 98.8 ± 0.2 |" in markdown_table(make_result({"protonet": (0.988, 0.0021)}), digits=1)


def test_markdown_merges_a_sweep_into_one_table(tmp_path: Path) -> None:
    sweep = [make_result({"protonet": (0.997, 0.001), "maml": (0.99, 0.002)}, n_shot=5),
             make_result({"protonet": (0.988, 0.0021)}, n_shot=1),
             make_result({"finetune": (0.9, 0.01)}, n_shot=1)]
    lines = markdown_table(sweep).splitlines()
    assert lines[0] == "| method | 5-way 1-shot | 5-way 5-shot |"
    assert lines[2:] == ["| protonet | 98.80 ± 0.21 | 99.70 ± 0.10 |",
                         "| maml | – | 99.00 ± 0.20 |",
                         "| finetune | 90.00 ± 1.00 | – |"]
    path = write_markdown(tmp_path / "table.md", sweep)
    assert path.read_text(encoding="utf-8").splitlines() == lines


def test_markdown_labels_datasets_when_they_differ_and_rejects_duplicates() -> None:
    same_domain = make_result({"protonet": (0.9, 0.01)}, dataset="mini/test")
    cross_domain = make_result({"protonet": (0.5, 0.02)}, dataset="cub/test", train_dataset="mini/train")
    header = markdown_table([same_domain, cross_domain]).splitlines()[0]
    assert header == "| method | mini/test 5-way 1-shot | mini/train → cub/test 5-way 1-shot |"
    with pytest.raises(ValueError, match="two results for 'protonet' in '5-way 1-shot'"):
        markdown_table([same_domain, make_result({"protonet": (0.8, 0.01)}, dataset="mini/test")])
    with pytest.raises(ValueError, match="no results"):
        markdown_table([])


def test_plots_are_written_as_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = [make_result({"protonet": (0.98, 0.002), "maml": (0.95, 0.004)}, n_shot=s) for s in (1, 5)]
    shots = plot_accuracy_vs_shots(tmp_path / "plots" / "shots.png", sweep, title="Omniglot")
    history = [{"step": s, "loss": 1.0 / (s + 1), "accuracy": s / 10} for s in range(10)] + [{"step": 10, "loss": 0.05}]
    curve = plot_learning_curve(tmp_path / "plots" / "curve.png", history)
    for path in (shots, curve):
        assert path is not None and path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["curve.png", "shots.png"]


def test_learning_curve_rejects_bad_history(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="have no 'step'"):
        plot_learning_curve(tmp_path / "c.png", [{"loss": 1.0}])
    with pytest.raises(ValueError, match=r"keys \['accuracy'\] are not in the history; available: \['loss'\]"):
        plot_learning_curve(tmp_path / "c.png", [{"step": 0, "loss": 1.0}])
    with pytest.raises(ValueError, match="history is empty"):
        plot_learning_curve(tmp_path / "c.png", [])
    assert not any(tmp_path.iterdir())


def test_plots_are_skipped_with_a_warning_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with caplog.at_level(logging.WARNING, logger="fewshot.evaluation.plots"):
        assert plot_accuracy_vs_shots(tmp_path / "shots.png", make_result({"protonet": (0.9, 0.01)})) is None
    assert "matplotlib is not installed" in caplog.text
    assert not any(tmp_path.iterdir())


def test_transductive_rows_are_marked_kept_apart_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from episodes import FewShotDataset
    from fewshot.evaluation import evaluate
    from fewshot.learners import Learner

    class Nearest(Learner):
        def __init__(self, *, transductive: bool) -> None:
            super().__init__()
            self.transductive = transductive

        def predict(self, batch):
            query = batch.query_x.flatten(2)
            if self.transductive:  # uses the other (unlabelled) queries of the episode
                query = query - query.mean(1, keepdim=True) + batch.support_x.flatten(2).mean(1, keepdim=True)
            return -torch.cdist(query, batch.support_x.flatten(2))

    images = torch.randint(0, 256, (40, 1, 4, 4), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    data = FewShotDataset.from_tensors(images, torch.arange(10).repeat_interleave(4), [f"c{i}" for i in range(10)],
                                       name="tiny")
    with caplog.at_level(logging.WARNING, logger="fewshot.evaluation.harness"):
        result = evaluate({"trans": Nearest(transductive=True), "plain": Nearest(transductive=False)}, data,
                          n_way=3, n_shot=1, n_query=2, episodes=4, progress=False, permutations=0)
    assert [r.transductive for r in result.learners] == [True, False]
    assert "trans (transductive" in caplog.text and "not comparable" in caplog.text
    rows = [line.split("|")[1].strip() for line in markdown_table(result).splitlines()[2:]]
    assert rows == ["plain", "trans (transductive)"]
    assert EvaluationResult.from_dict(result.to_dict()).learners[0].transductive is True
