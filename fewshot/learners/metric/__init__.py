"""Metric-based learners: embed every image, then classify queries by a similarity to the support set."""

from fewshot.learners.metric.protonet import ProtoNet, prototypes

__all__ = ["ProtoNet", "prototypes"]
