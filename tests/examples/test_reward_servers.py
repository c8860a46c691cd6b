"""The example external reward servers, started as real processes on loopback ports."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from quartet.clients.base import RoleCallError
from quartet.clients.health import health_status, wait_for_serving
from quartet.clients.reward import GrpcRewardClient
from quartet.rewards.base import RewardInputs
from quartet.rewards.http import RemoteHTTPReward, RemoteRewardRejected

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "reward_servers"

# (prompt, response, label, expected reward)
CASES = [
    ("What is 6*7?", " 6*7 = 42", "42", 1.0),
    ("What is 6*7?", " It is 41, not 42... no wait, 43.", "42", 0.0),
    ("Sum 600+634.5?", " The total is 1,234.5.", "#### 1234.5", 1.0),
    ("Half of 1.5?", " 3/4", "0.75", 1.0),
    ("What is 2-5?", " The answer: -3", "-3", 1.0),
    ("Name a colour", " blue", "7", 0.0),
]


def _inputs(with_responses: bool = True) -> RewardInputs:
    prompts = [c[0] for c in CASES]
    responses = [c[1] for c in CASES]
    return RewardInputs([p + r for p, r in zip(prompts, responses, strict=True)], prompts,
                        responses if with_responses else [""] * len(CASES),
                        [c[2] for c in CASES])


EXPECTED = [c[3] for c in CASES]
FOUND = [0.0 if c[1] == " blue" else 1.0 for c in CASES]


def _start(tmp_path, script: str):
    port_file = tmp_path / f"{script}.port"
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / script), "--port", "0", "--port-file", str(port_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, f"{script} did not start"
        time.sleep(0.05)
    return proc, int(port_file.read_text())


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    return out


@pytest.fixture()
def grpc_verifier(tmp_path):
    proc, port = _start(tmp_path, "math_verifier_grpc.py")
    address = f"127.0.0.1:{port}"
    try:
        wait_for_serving(address, timeout_s=30, process=proc, what="math verifier")
        yield address
    finally:
        if proc.poll() is None:
            _stop(proc)


def test_grpc_verifier_scores_through_the_reward_client(grpc_verifier, monkeypatch):
    assert health_status(grpc_verifier, service="quartet.v1.Reward") == "SERVING"
    client = GrpcRewardClient(grpc_verifier, timeout_s=30)
    assert client.info().model == "math-verifier"
    monkeypatch.setattr("quartet.clients.reward.ROWS_PER_SLICE", 4)  # two slices
    result = client.score(_inputs())
    assert result.rewards == EXPECTED
    assert result.extra_logs == {"answer_found": FOUND}
    # Without response texts the verifier strips the prompt off the query itself.
    assert client.score(_inputs(with_responses=False)).rewards == EXPECTED
    client.close()


def test_grpc_verifier_refuses_missing_labels(grpc_verifier):
    client = GrpcRewardClient(grpc_verifier, timeout_s=30)
    inputs = _inputs()
    inputs.labels = []
    with pytest.raises(RoleCallError) as info:
        client.score(inputs)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "labels:" in str(info.value)
    client.close()


def test_http_verifier_scores_through_the_adapter(tmp_path):
    proc, port = _start(tmp_path, "math_verifier_http.py")
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=5) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        reward = RemoteHTTPReward(f"{base}/get_reward", timeout_s=5, max_retries=0)
        result = reward(_inputs(with_responses=False))  # OpenRLHF's request: no responses
        assert result.rewards == EXPECTED and result.scores == EXPECTED
        assert result.extra_logs == {"answer_found": FOUND}
        split = RemoteHTTPReward(f"{base}/get_reward", batch_size=2, concurrency=3)
        assert split(_inputs()).rewards == EXPECTED

        inputs = _inputs()
        inputs.labels = ["1"]  # a malformed request: 400, not retried, message passed on
        inputs.prompts, inputs.responses = [], []
        with pytest.raises(RemoteRewardRejected, match=r"HTTP 400 .*labels: expected 6"):
            RemoteHTTPReward(f"{base}/get_reward", max_retries=3)._score_chunk(inputs, 0, 6)
    finally:
        _stop(proc)


def test_both_verifiers_agree_on_the_same_cases():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import math_verifier_grpc as g
        import math_verifier_http as h
    finally:
        sys.path.remove(str(EXAMPLES))
    for _, response, label, expected in CASES:
        assert g.verify(response, label)[0] == h.verify(response, label)[0] == expected
