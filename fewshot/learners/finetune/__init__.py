"""Fine-tune learners: a pretrained backbone (frozen or adapted) and a classifier fitted on each support set."""

from fewshot.learners.finetune.baseline import BackboneFineTune, FineTune, FrozenFineTune, head_logits, init_head

__all__ = ["BackboneFineTune", "FineTune", "FrozenFineTune", "head_logits", "init_head"]
