"""fewshot: few-shot and meta-learning for PyTorch.

The main public names, re-exported from their modules:

- data: :class:`FewShotDataset`, :class:`EpisodeSampler`, :class:`EpisodeBatch` (from :mod:`episodes`);
- backbones: :func:`create_backbone`, :func:`load_pretrained`;
- learners: :class:`ProtoNet`, :class:`MAML`, :class:`FineTune` (and the bases :class:`Learner`,
  :class:`MetaLearner`);
- training: :class:`EpisodicTrainer`, :class:`SupervisedPretrainer`, :class:`PretrainThenEpisodic`;
- evaluation: :func:`evaluate`, :func:`evaluate_settings`, :func:`markdown_table`.
"""

__version__ = "0.1.0"

from episodes import EpisodeBatch, EpisodeSampler, FewShotDataset
from fewshot.backbones import create_backbone, load_pretrained
from fewshot.evaluation import evaluate, evaluate_settings, markdown_table
from fewshot.learners import MAML, FineTune, Learner, MetaLearner, OuterOptimizer, ProtoNet
from fewshot.training import (
    EpisodicTrainer,
    PretrainThenEpisodic,
    Run,
    SupervisedPretrainer,
    TrainingData,
)

__all__ = [
    "MAML",
    "EpisodeBatch",
    "EpisodeSampler",
    "EpisodicTrainer",
    "FewShotDataset",
    "FineTune",
    "Learner",
    "MetaLearner",
    "OuterOptimizer",
    "PretrainThenEpisodic",
    "ProtoNet",
    "Run",
    "SupervisedPretrainer",
    "TrainingData",
    "__version__",
    "create_backbone",
    "evaluate",
    "evaluate_settings",
    "load_pretrained",
    "markdown_table",
]
