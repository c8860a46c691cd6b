"""Methods that sample and score before they train: batch inference (best-of-n, rejection
sampling, conditional-SFT data), rejection-sampling fine-tuning and iterative DPO.

Each is a short pipeline over pieces quartet already has: a generation engine (in-process or
the rollout service), reward sources (reward models, rule files, reward services, HTTP
servers) and the trainers. See docs/methods.md.
"""
