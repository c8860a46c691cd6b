"""The one error type of the codec: it names the offending field so servers can say which."""

from __future__ import annotations


class CodecError(ValueError):
    """A wire message does not describe a valid tensor; `field` is its dotted path."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
