"""Training telemetry: progress bar, jsonl, TensorBoard, W&B."""

from quartet.tracking.tracker import Tracker

__all__ = ["Tracker"]
