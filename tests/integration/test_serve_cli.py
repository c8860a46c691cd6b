"""`quartet serve <role>` as a real process: health, graceful SIGTERM, startup failures."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from quartet.clients.health import health_status, wait_for_serving

REWARD_FILE = Path(__file__).resolve().parents[2] / "examples" / "rewards" / "length_reward.py"


def _serve(tmp_path, role, *args):
    port_file = tmp_path / f"{role}.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartet.cli.main", "serve", role, "--port", "0",
         "--port-file", str(port_file), *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 120
    while not port_file.exists() or not port_file.read_text().strip():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    return proc, f"127.0.0.1:{int(port_file.read_text())}"


@pytest.mark.parametrize(
    "role, args",
    [
        ("reference", lambda m: ["--model", str(m)]),
        ("reward", lambda m: ["--reward-func", str(REWARD_FILE)]),
    ],
)
def test_serve_health_then_sigterm_exits_zero(tmp_path, tiny_model_path, role, args):
    proc, address = _serve(tmp_path, role, *args(tiny_model_path))
    try:
        wait_for_serving(address, timeout_s=120, process=proc, what=role)
        assert health_status(address) == "SERVING"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
    assert "shutting down" in out


def test_bad_model_path_exits_nonzero_with_a_clear_message(tmp_path):
    proc, _ = _serve(tmp_path, "reference", "--model", str(tmp_path / "missing"))
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "reference failed to start" in out


def test_unknown_role_is_refused():
    result = subprocess.run([sys.executable, "-m", "quartet.cli.main", "serve", "judge"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown role 'judge'" in result.stderr
