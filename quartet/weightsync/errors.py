"""The error of the weight data plane: a session that cannot be completed as announced."""

from __future__ import annotations


class WeightSyncError(RuntimeError):
    """The sender and a receiver disagree on a session, or the group failed mid-session."""
