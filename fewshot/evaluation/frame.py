"""The frame the harness's scoring functions share (:func:`~fewshot.evaluation.harness.evaluate_settings` and
:func:`~fewshot.evaluation.variable.evaluate_variable`): the learners and the permutation count checked, the learners
split into those scored on features of each image embedded once and those called on images, eval mode for the run
with every learner's own mode restored afterwards (also when scoring fails), and the progress bar."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Mapping

import torch
from tqdm.auto import tqdm

from fewshot.learners.base import EmbeddingLearner, Learner

__all__ = ["ScoringFrame", "default_embed_chunk", "resolve_embed_chunk"]


def default_embed_chunk(device: torch.device) -> int:
    """Images per embedding forward pass where the caller gives none: 128 on a CPU, 1024 elsewhere. On this
    project's CPU a Conv4 embedded Omniglot images 2.2-2.6x faster per image in chunks of 128 than of 1024, whose
    activations outgrow the caches (``benchmarks/results/embed_chunk.md``); an accelerator wants large chunks."""
    return 128 if device.type == "cpu" else 1024


def resolve_embed_chunk(embed_chunk: int | None, device: torch.device) -> int:
    """The images per embedding forward pass of a harness call: ``embed_chunk``, or :func:`default_embed_chunk` of
    ``device`` where it is None. Raises ``ValueError`` unless the result is an integer >= 1."""
    chunk = default_embed_chunk(device) if embed_chunk is None else embed_chunk
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"embed_chunk must be an integer >= 1 (or None for the device's default), got {chunk!r}")
    return chunk


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_learners(learners: Mapping[str, Learner], device: torch.device) -> None:
    if not learners:
        raise ValueError("evaluate() needs at least one learner, e.g. {'protonet': ProtoNet(...)}")
    for name, learner in learners.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"learner names must be non-empty strings, got {name!r}")
        if not isinstance(learner, Learner):
            raise TypeError(f"learner {name!r} is a {type(learner).__name__}, not a fewshot Learner")
        for tensor in itertools.chain(learner.parameters(), learner.buffers()):
            if not _same_device(tensor.device, device):
                raise ValueError(f"learner {name!r} has tensors on {tensor.device} but evaluation runs on "
                                 f"{device}; call learner.to({str(device)!r}) first or pass device=")
        learner.check_finite(f"learner {name!r}")


class ScoringFrame:
    """The learners of one evaluation, checked, and what each scoring loop does around its work.

    Args:
        learners: name -> learner; at least one, named by non-empty strings, every parameter and buffer on ``device``
            and finite (``ValueError``; ``TypeError`` for an object that is not a :class:`Learner`).
        device: where the evaluation runs.
        embed_once: score :class:`EmbeddingLearner` s on features embedded once (:attr:`embedded`); False puts every
            learner in :attr:`direct`.
        permutations: random sign patterns of each pair's permutation test; ``ValueError`` unless an int >= 0.
    Attributes:
        embedded: the learners scored on embedded features, in the order of ``learners``.
        direct: the others, scored by ``predict`` on images, in the order of ``learners``.
    """

    def __init__(self, learners: Mapping[str, Learner], *, device: torch.device, embed_once: bool,
                 permutations: int) -> None:
        _check_learners(learners, device)
        if isinstance(permutations, bool) or not isinstance(permutations, int) or permutations < 0:
            raise ValueError(f"permutations must be an integer >= 0 (0 skips the permutation test), "
                             f"got {permutations!r}")
        self.learners = learners
        self.embedded: dict[str, EmbeddingLearner] = {
            k: v for k, v in learners.items() if embed_once and isinstance(v, EmbeddingLearner)}
        self.direct: dict[str, Learner] = {k: v for k, v in learners.items() if k not in self.embedded}

    @contextlib.contextmanager
    def scoring(self, *, total: int, progress: bool, desc: str) -> Iterator[tqdm]:
        """Every learner in eval mode inside the block, and back in its own mode (train or eval) after it, whether
        the block finishes or raises; yields a tqdm bar of ``total`` episodes (hidden unless ``progress``), closed
        after the block."""
        modes = {name: learner.training for name, learner in self.learners.items()}
        bar = tqdm(total=total, disable=not progress, unit="episode", desc=desc)
        try:
            for learner in self.learners.values():
                learner.eval()
            yield bar
        finally:
            bar.close()
            for name, learner in self.learners.items():
                learner.train(modes[name])
