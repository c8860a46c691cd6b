"""The rollout role: a generation engine behind gRPC that takes new actor weights in place."""
