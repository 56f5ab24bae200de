"""fewshot: few-shot and meta-learning for PyTorch."""

__version__ = "0.1.0"
