"""Few-shot learners: ProtoNet, MAML (second order, first order, ANIL, Meta-SGD) and fine-tune baselines."""

from fewshot.learners.base import EmbeddingLearner, Learner, MetaLearner, OuterOptimizer
from fewshot.learners.finetune import BackboneFineTune, FineTune, FrozenFineTune
from fewshot.learners.maml import MAML
from fewshot.learners.protonet import ProtoNet

__all__ = [
    "MAML",
    "BackboneFineTune",
    "EmbeddingLearner",
    "FineTune",
    "FrozenFineTune",
    "Learner",
    "MetaLearner",
    "OuterOptimizer",
    "ProtoNet",
]
