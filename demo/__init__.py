"""`make demo`: GRPO on SmolLM2-135M-Instruct across local services (see docs/demo.md)."""
