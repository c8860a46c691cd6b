"""quartet: RLHF with every model role as its own gRPC service."""

__version__ = "0.1.0"
