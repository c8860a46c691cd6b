"""Datasets for the trainers: reading rows, rendering templates, tokenizing, batching, order."""

from quartet.data.batch import TokenBatch, collate, packed_causal_mask
from quartet.data.preference_dataset import PreferenceSample, build_preference_samples
from quartet.data.sampler import MicroBatchPlan
from quartet.data.sft_dataset import build_sft_samples
from quartet.data.sources import DataError, RowSource, get_key, load_rows
from quartet.data.tokenize import TokenizedSample, tokenize_chunks

__all__ = [
    "DataError",
    "MicroBatchPlan",
    "PreferenceSample",
    "RowSource",
    "TokenBatch",
    "TokenizedSample",
    "build_preference_samples",
    "build_sft_samples",
    "collate",
    "get_key",
    "load_rows",
    "packed_causal_mask",
    "tokenize_chunks",
]
