"""The error of the weight data plane: a session that cannot be completed as announced."""

from __future__ import annotations


class WeightSyncError(RuntimeError):
    """The sender and a receiver disagree on a session, or the group failed mid-session."""


class WeightGroupAborted(WeightSyncError):
    """The group was aborted (a member died or left, or it is being re-formed): every member
    leaves it; only a new group carries the next session."""
