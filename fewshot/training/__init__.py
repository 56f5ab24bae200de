"""Training: the trainers a config names (episodic, supervised pretraining, pretrain-then-episodic), the
meta-training loop, supervised pretraining, checkpoints and distributed training."""

from fewshot.training.checkpoint import load_checkpoint, save_checkpoint
from fewshot.training.meta_train import TrainResult, TrainSettings, check_resume, meta_train
from fewshot.training.pretrain import CosineClassifier, PretrainResult, pretrain_backbone
from fewshot.training.trainers import (
    EpisodeShape,
    EpisodicTrainer,
    PretrainThenEpisodic,
    Run,
    SupervisedPretrainer,
    Trainer,
    TrainingData,
)

__all__ = [
    "CosineClassifier",
    "EpisodeShape",
    "EpisodicTrainer",
    "PretrainResult",
    "PretrainThenEpisodic",
    "Run",
    "SupervisedPretrainer",
    "TrainResult",
    "TrainSettings",
    "Trainer",
    "TrainingData",
    "check_resume",
    "load_checkpoint",
    "meta_train",
    "pretrain_backbone",
    "save_checkpoint",
]
