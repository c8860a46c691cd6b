"""Non-RL trainers (SFT, RM, DPO) on the shared TrainEngine."""

from quartet.trainers.base_trainer import BaseTrainer
from quartet.trainers.dpo_trainer import DPOTrainer
from quartet.trainers.rm_trainer import RMTrainer
from quartet.trainers.sft_trainer import SFTTrainer

__all__ = ["BaseTrainer", "DPOTrainer", "RMTrainer", "SFTTrainer"]
