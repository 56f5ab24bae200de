"""Few-shot learners, grouped by paradigm.

- :mod:`~fewshot.learners.metric`: ProtoNet.
- :mod:`~fewshot.learners.gradient`: MAML (second order, first order, ANIL, Meta-SGD) over one functional
  inner loop.
- :mod:`~fewshot.learners.finetune`: Baseline / Baseline++ fine-tuning.

Every learner implements :class:`Learner` (``predict(batch) -> logits``, ``transductive``); meta-trained ones
also :class:`MetaLearner`. Configs name the classes re-exported here (``_target_: fewshot.learners.ProtoNet``).
"""

from fewshot.learners.base import EmbeddingLearner, Learner, MetaLearner, MetricLearner, OuterOptimizer
from fewshot.learners.finetune import BackboneFineTune, FineTune, FrozenFineTune
from fewshot.learners.gradient import MAML
from fewshot.learners.metric import ProtoNet

__all__ = [
    "MAML",
    "BackboneFineTune",
    "EmbeddingLearner",
    "FineTune",
    "FrozenFineTune",
    "Learner",
    "MetaLearner",
    "MetricLearner",
    "OuterOptimizer",
    "ProtoNet",
]
