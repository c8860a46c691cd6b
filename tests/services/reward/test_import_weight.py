"""A rule-reward service must not import torch: it computes nothing with tensors, and torch
alone is ~220 MiB resident per process (docs/benchmarks.md, "Fourth pass (lean)")."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

PROBE = """
import json, sys
import quartet.cli.main, quartet.serving, quartet.serving.presence
import services.reward.server
from quartet.rewards.rule import RuleReward
from quartet.v1 import reward_pb2
from services.reward.servicer import RewardServicer

servicer = RewardServicer(RuleReward(sys.argv[1]), "rule")
req = reward_pb2.ScoreRequest(queries=["Q: 3", "Q: 4"], prompts=["Q: ", "Q: "],
                              responses=["3", "4"], labels=["3", "5"])
out = next(servicer.Score(iter([req]), None))
print(json.dumps({"rewards": list(out.rewards),
                  "heavy": sorted(m for m in ("torch", "numpy", "transformers", "vllm",
                                              "deepspeed") if m in sys.modules)}))
"""


def test_rule_reward_service_scores_without_importing_torch():
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT / "demo" / "reward.py")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rewards"] == [1.0, 0.0]
    assert result["heavy"] == [], f"the reward service's own path imported {result['heavy']}"


def test_codec_names_still_resolve_from_the_package():
    from quartet import codec

    for name in codec.__all__:
        assert getattr(codec, name) is not None
    assert "decode_token_batch" in dir(codec)
