"""Results of runs on disk: one run's result files, many runs' results merged into one table, and the checks
before a trained run is re-tested on other data."""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from episodes import FewShotDataset
from episodes.files import atomic_write_text
from episodes.fingerprint import content_fingerprint, short
from fewshot.evaluation.metrics import paired_comparison
from fewshot.evaluation.plots import plot_accuracy_vs_shots
from fewshot.evaluation.report import comparisons_markdown, markdown_table, read_json, write_csv, write_json
from fewshot.evaluation.results import Comparison, EvaluationResult

__all__ = ["Runs", "check_same_test_data", "check_test_set", "different_copies", "gather_by_training_data",
           "gather_results", "load_runs", "pool_same_episodes", "run_label", "write_results"]

log = logging.getLogger(__name__)


def write_results(out_dir: Path, results: list[EvaluationResult], provenance: dict[str, Any], *,
                  notes: Sequence[str] = ()) -> None:
    """``results.json`` (with ``provenance``), ``results.csv``, ``results.md`` (starting with the data trained on
    and tested on, the query sets' class balance and ``notes``, e.g. :func:`different_copies`), ``comparisons.md``
    (every paired test, Holm-adjusted, when there is one) and ``accuracy_vs_shots.png`` in ``out_dir``."""
    write_json(out_dir / "results.json", results, provenance=provenance)
    write_csv(out_dir / "results.csv", results)
    pairs = dict.fromkeys((r.train_dataset or "?", r.test_dataset) for r in results)
    lines = "".join(f"- trained on `{train}`, tested on `{test}`\n" for train, test in pairs)
    fixed = sorted({r.spec.n_query for r in results if r.spec.variable is None})
    if fixed:
        lines += (f"- query sets balanced: {' or '.join(map(str, fixed))} queries per class in every episode (the "
                  "transductive methods' assumption holds)\n")
    lines += "".join(f"- variable episodes' query sets balanced: {queries}\n"
                     for queries in dict.fromkeys(r.spec.queries for r in results if r.spec.variable is not None))
    lines += "".join(f"- {note}\n" for note in notes)
    atomic_write_text(out_dir / "results.md", f"{lines}\n{markdown_table(results)}")
    if any(r.comparisons for r in results):
        atomic_write_text(out_dir / "comparisons.md", comparisons_markdown(results))
    plot_accuracy_vs_shots(out_dir / "accuracy_vs_shots.png", results)


def run_label(results_file: Path, root: Path) -> str:
    """The command-line overrides of the run that wrote ``results_file`` (its ``.hydra/overrides.yaml``, Hydra
    keys left out), else its folder relative to ``root``."""
    overrides = results_file.parent / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        listed = yaml.safe_load(overrides.read_text(encoding="utf-8")) or []
        kept = [str(o) for o in listed if not str(o).startswith("hydra.")]
        if kept:
            return ",".join(kept)
    return str(results_file.parent.relative_to(root))


#: (results file, its results, its provenance) for each file read.
Loaded = list[tuple[Path, list[EvaluationResult], dict[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Runs:
    """The ``results.json`` files under ``root``, read once (:func:`load_runs`), for :func:`gather_results`,
    :func:`gather_by_training_data` and :func:`different_copies` to share."""

    root: Path
    loaded: Loaded


def load_runs(root: Path, *, include_eval: bool = False, skip: Path | None = None) -> Runs:
    """Read every ``results.json`` under ``root`` (a multirun folder, a run, or any folder of runs), in path order.

    Re-tests written by ``fewshot-eval`` (under ``eval/``) are left out unless ``include_eval``; results under
    ``skip`` (e.g. the report's own output folder) always are. Raises FileNotFoundError, saying what to pass, when
    there is none."""
    files = sorted(p for p in root.rglob("results.json")
                   if (include_eval or "eval" not in p.relative_to(root).parts[:-1])
                   and (skip is None or skip not in p.parents))
    if not files:
        raise FileNotFoundError(f"no results.json under {root}; pass dir=<a multirun folder or run folder that "
                                "fewshot-train wrote>")
    return Runs(root, [(path, *read_json(path)) for path in files])


def gather_results(runs: Runs) -> list[EvaluationResult]:
    """Every result of ``runs`` (:func:`load_runs`), in path order. Where two runs report the same method name in the
    same setting, each is renamed ``name [overrides]`` after its run's command-line overrides (:func:`run_label`),
    so one table holds them all (:func:`gather_by_training_data` names them for cross-domain matrices instead).

    Results of different runs on the same episodes (same dataset, setting, query count, episode count and seed or
    episodes file, the same variable-episode distribution where the episodes are variable, the same recorded test
    classes and the same copy of the data: content fingerprint) are pooled
    into one :class:`EvaluationResult` holding every pair's paired comparison (:func:`pool_same_episodes`), so any
    two runs can be compared episode by episode. Results on different copies of the same classes are not pooled,
    and a warning names them (:func:`different_copies`).
    """
    copies = _fingerprints(runs.loaded)
    for note in different_copies(runs):
        log.warning("%s", note)
    renamed = _renamed(runs, clash=_same_column)
    return pool_same_episodes([(_pool_key(provenance, copies), result) for provenance, result in renamed])


def gather_by_training_data(runs: Runs) -> list[EvaluationResult]:
    """The results :func:`gather_results` chooses, unpooled and named for cross-domain matrices
    (:func:`~fewshot.evaluation.cross_domain.cross_domain_markdown`): a method keeps its own name whatever data it
    was trained and tested on, so one method trained on two datasets gives one matrix with two rows. Only where two
    runs report one method in the same setting, trained on the same data and tested on the same data (one matrix
    cell), is each renamed ``name [overrides]`` (:func:`run_label`)."""
    return [result for _, result in _renamed(runs, clash=_same_cell)]


def _same_column(name: str, result: EvaluationResult) -> tuple[str, ...]:
    """A main-table cell: the method in one setting on one test set (:func:`gather_results`)."""
    return name, result.test_dataset, result.spec.setting


def _same_cell(name: str, result: EvaluationResult) -> tuple[str | None, ...]:
    """A cross-domain matrix cell: the method in one setting, trained on one dataset, tested on one."""
    return name, result.spec.setting, result.train_dataset, result.test_dataset


def _renamed(runs: Runs, *, clash: Callable[[str, EvaluationResult], tuple[str | None, ...]]
             ) -> list[tuple[dict[str, Any], EvaluationResult]]:
    """(provenance, result) for every result of ``runs``, each learner (and its comparisons) whose ``clash`` key
    (of its name and result) occurs more than once renamed ``name [overrides]`` after its run (:func:`run_label`)."""
    seen = Counter(clash(learner.name, result) for _, results, _ in runs.loaded for result in results
                   for learner in result.learners)
    renamed = []
    for path, results, provenance in runs.loaded:
        for result in results:
            def rename(name: str, result: EvaluationResult = result, path: Path = path) -> str:
                return f"{name} [{run_label(path, runs.root)}]" if seen[clash(name, result)] > 1 else name
            learners = tuple(dataclasses.replace(r, name=rename(r.name)) for r in result.learners)
            comparisons = tuple(dataclasses.replace(c, learner_a=rename(c.learner_a), learner_b=rename(c.learner_b))
                                for c in result.comparisons)
            renamed.append((provenance, dataclasses.replace(result, learners=learners, comparisons=comparisons)))
    return renamed


def tested_key(provenance: dict[str, Any]) -> tuple[str, str | None]:
    """The recorded test classes (as JSON, without the fingerprint) and the test data's content fingerprint (None
    in results written before fingerprints were recorded)."""
    tested = dict(provenance.get("test_data") or {})
    fingerprint = tested.pop("fingerprint", None)
    return json.dumps(tested or None, sort_keys=True), fingerprint


def _fingerprints(loaded: Loaded) -> dict[str, dict[str, list[Path]]]:
    """Recorded test classes -> content fingerprint -> the results files scored on that copy."""
    copies: dict[str, dict[str, list[Path]]] = {}
    for path, _, provenance in loaded:
        tested, fingerprint = tested_key(provenance)
        if fingerprint is not None:
            copies.setdefault(tested, {}).setdefault(fingerprint, []).append(path)
    return copies


def _pool_key(provenance: dict[str, Any], copies: dict[str, dict[str, list[Path]]]) -> str:
    """Results pool only on the same test classes and the same copy of the data; a result without a fingerprint
    (an older file) counts as scored on the copy the others were, when they all agree on one."""
    tested, fingerprint = tested_key(provenance)
    known = copies.get(tested, {})
    if fingerprint is None and len(known) == 1:
        fingerprint = next(iter(known))
    return f"{tested} {fingerprint}"


def different_copies(runs: Runs) -> list[str]:
    """One line for each test set whose results in ``runs`` (:func:`load_runs`) were
    scored on different copies of the data: the same classes and image counts, different content fingerprints
    (:func:`episodes.fingerprint.content_fingerprint`), naming the runs of each copy. Such results are not pooled
    and not comparable."""
    notes = []
    for tested, copies in _fingerprints(runs.loaded).items():
        if len(copies) < 2:
            continue
        name = json.loads(tested)["name"] if tested != "null" else "?"
        labels = "; ".join(f"{short(fingerprint)}: {', '.join(run_label(p, runs.root) for p in paths)}"
                           for fingerprint, paths in copies.items())
        notes.append(f"not comparable: results on {name} were scored on {len(copies)} different copies of the test "
                     f"data (same classes, other pixels; content fingerprints {labels}); python -m fewshot data check "
                     "says which copy a folder holds")
    return notes


def pool_same_episodes(results: list[tuple[str, EvaluationResult]]) -> list[EvaluationResult]:
    """Pool results scored on identical episodes into one result per episode set, in first-seen order.

    Args:
        results: (test-data key, result) pairs; results with equal keys, specs (every field, the variable-episode
            distribution included) and datasets were scored on the same episodes (the sampler is a pure function of
            its seed), so their per-episode accuracies pair up.
            The key is any string that identifies the test classes (e.g. the recorded ``test_data`` as JSON).
    Returns:
        One result per episode set with every learner (names must differ) and every pair's paired t-test, the
        comparisons already in the inputs kept as they are (they may carry permutation p-values).
    """
    groups: dict[tuple, list[EvaluationResult]] = {}
    for tested, result in results:
        groups.setdefault((tested, result.spec, result.train_dataset, result.test_dataset), []).append(result)
    pooled = []
    for members in groups.values():
        if len(members) == 1:
            pooled.append(members[0])
            continue
        learners = tuple(learner for member in members for learner in member.learners)
        names = [learner.name for learner in learners]
        if len(set(names)) != len(names):
            raise ValueError(f"two results named alike on the same episodes ({names}); rename the learners")
        known = {(c.learner_a, c.learner_b): c for member in members for c in member.comparisons}
        comparisons = tuple(
            known.get((a.name, b.name)) or Comparison(a.name, b.name, paired_comparison(a.accuracies, b.accuracies))
            for a, b in itertools.combinations(learners, 2))
        mixed = sum(a.transductive != b.transductive for a, b in itertools.combinations(learners, 2))
        if mixed:
            log.warning("%s %s: %d paired comparisons set a transductive learner (it uses the unlabelled query set) "
                        "against an inductive one; the two protocols are not comparable (comparisons.md marks them)",
                        members[0].test_dataset, members[0].spec.setting, mixed)
        pooled.append(dataclasses.replace(members[0], learners=learners, comparisons=comparisons))
    return pooled


def check_test_set(test_set: FewShotDataset, *, channels: int, image_size: int,
                   train_set: FewShotDataset | None = None) -> None:
    """Refuse a test set whose images do not fit a model trained on ``channels``-channel ``image_size`` px
    images (``ValueError`` saying which keys to set); warn when some test classes were training classes."""
    got = (int(test_set.images.shape[1]), int(test_set.images.shape[-1]))
    if got != (channels, image_size):
        raise ValueError(f"the run was trained on {channels}-channel {image_size}px images but {test_set.name} has "
                         f"{got[0]}-channel {got[1]}px images; set test_dataset.channels={channels} "
                         f"test_dataset.loader.image_size={image_size}")
    shared = set(train_set.class_names) & set(test_set.class_names) if train_set is not None else set()
    if shared:
        log.warning("%d of the %d test classes of %s were also training classes of this run (e.g. %s): the numbers "
                    "are not a test on unseen classes", len(shared), test_set.num_classes, test_set.name, min(shared))


def check_same_test_data(results_file: Path, test_set: FewShotDataset) -> None:
    """Refuse (``ValueError`` saying what changed) to re-test on classes other than those a run was tested on, as
    recorded in its ``results_file`` (``provenance.test_data``), and warn when the classes are the same but the images
    are not (another content fingerprint); files without the record are not checked."""
    tested = read_json(results_file)[1].get("test_data")
    if not tested:
        return
    then = dict(zip(tested["classes"], tested["class_sizes"], strict=True))
    now = dict(zip(test_set.class_names, test_set.class_sizes.tolist(), strict=True))
    if then == now:
        if tested.get("fingerprint") not in (None, found := content_fingerprint(test_set)):
            log.warning("the test images differ from those %s was tested on (another copy of the same classes: content "
                        "fingerprint %s, then %s): the re-test's numbers are not comparable with the run's",
                        results_file, short(found), short(tested["fingerprint"]))
        return
    missing, new = sorted(set(then) - set(now)), sorted(set(now) - set(then))
    resized = sorted(c for c in set(then) & set(now) if then[c] != now[c])
    changes = [f"{len(items)} {what} (e.g. {items[0]})" for items, what in
               ((missing, "classes missing"), (new, "classes new"), (resized, "classes with another image count"))
               if items]
    raise ValueError(f"the test data changed since {results_file} was written: {'; '.join(changes)}; the re-test "
                     "would not score the same episodes. Restore the data the run was tested on, or test on these "
                     "classes explicitly with test_dataset=<option>")
