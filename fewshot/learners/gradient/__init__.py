"""Gradient-based meta-learners: a functional inner loop (per task or vmapped over tasks) adapts the
parameters on each support set; batch norm follows :class:`NormPolicy`."""

from fewshot.learners.gradient.functional import NormPolicy, eval_mode
from fewshot.learners.gradient.inner_loop import Params, adapt, gradient_update, map_tasks, resolve_batched
from fewshot.learners.gradient.maml import MAML

__all__ = ["MAML", "NormPolicy", "Params", "adapt", "eval_mode", "gradient_update", "map_tasks", "resolve_batched"]
