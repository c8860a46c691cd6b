"""Reward sources behind the reward role: rule-based functions and reward models."""

from quartet.rewards.base import RewardFunction, RewardInputs, RewardResult
from quartet.rewards.rule import load_reward_file

__all__ = ["RewardFunction", "RewardInputs", "RewardResult", "load_reward_file"]
