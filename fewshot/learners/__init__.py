"""Few-shot learners, grouped by paradigm (each configured by its full module path in ``configs/learner/``).

- :mod:`~fewshot.learners.metric`: ProtoNet, Matching Networks, Relation Network, DN4, SimpleShot, Meta-Baseline,
  FEAT.
- :mod:`~fewshot.learners.gradient`: MAML (second order, first order, ANIL, Meta-SGD, BOIL), MAML++, iMAML and
  Reptile over one functional inner loop.
- :mod:`~fewshot.learners.solver`: R2-D2 and MetaOptNet, differentiable ridge-regression and SVM heads.
- :mod:`~fewshot.learners.finetune`: Baseline / Baseline++ fine-tuning and the transductive methods (TIM, BD-CSPN,
  LaplacianShot, PT-MAP, transductive fine-tuning).

Every learner implements :class:`Learner` (``predict(batch) -> logits``, ``transductive``); meta-trained ones
also :class:`MetaLearner`. The classes most used from Python are re-exported here.
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
