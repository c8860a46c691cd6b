"""RemoteHTTPReward against real stdlib HTTP servers on loopback, and the reward role proxying.

Each test starts `http.server` in a thread on port 0 with a scripted behaviour (answer,
sleep past the timeout, 5xx then success, 4xx, garbage ...) and checks the outcome, the
attempts the server saw and that the error names the URL and the attempt count.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import pytest

from quartet.clients.base import RoleCallError
from quartet.clients.health import wait_for_serving
from quartet.clients.reward import GrpcRewardClient
from quartet.ports import free_port
from quartet.rewards.base import RewardInputs
from quartet.rewards.http import (
    RemoteHTTPReward,
    RemoteRewardBadResponse,
    RemoteRewardRejected,
    RemoteRewardUnavailable,
)
from quartet.serving import RoleServer
from quartet.v1 import reward_pb2_grpc
from services.reward.servicer import RewardServicer

FAST = {"backoff_s": 0.01, "max_backoff_s": 0.05}


class StubServer:
    """A stdlib HTTP server; `behave(payload, n)` returns (status, body[, headers]) for the
    n-th request (1-based), or sleeps. Records requests and the peak number in flight."""

    def __init__(self, behave) -> None:
        self.behave = behave
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.inflight = 0
        self.peak_inflight = 0
        self.release = threading.Event()  # wakes sleeping handlers at teardown
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with stub._lock:
                    stub.requests.append(json.loads(body))
                    stub.headers.append(dict(self.headers))
                    n = len(stub.requests)
                    stub.inflight += 1
                    stub.peak_inflight = max(stub.peak_inflight, stub.inflight)
                try:
                    out = stub.behave(stub.requests[-1], n, stub)
                finally:
                    with stub._lock:
                        stub.inflight -= 1
                if out is None:  # the behaviour hung up without answering
                    return
                status, data, *extra = out
                data = data if isinstance(data, bytes) else json.dumps(data).encode()
                try:
                    self.send_response(status)
                    for k, v in (extra[0] if extra else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (timeout): nothing to do
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/get_reward"
        self._thread = threading.Thread(target=self.httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def stub_server():
    servers: list[StubServer] = []

    def start(behave) -> StubServer:
        servers.append(StubServer(behave))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


def _inputs(n: int) -> RewardInputs:
    return RewardInputs([f"q{i} answer {i}" for i in range(n)], [f"q{i}" for i in range(n)],
                        [f" answer {i}" for i in range(n)], [str(i) for i in range(n)])


def _echo_label(payload, n, stub):
    """Reward = the label as a number; scores = 2x; extra log = query length."""
    rewards = [float(x) for x in payload["labels"]]
    return 200, {"rewards": rewards, "scores": [2 * r for r in rewards],
                 "extra_logs": {"qlen": [len(q) for q in payload["query"]]}}


# -- the happy path ---------------------------------------------------------------------


def test_scores_through_a_stdlib_server_with_openrlhf_json(stub_server):
    srv = stub_server(_echo_label)
    reward = RemoteHTTPReward(srv.url, headers={"Authorization": "Bearer t0ken"})
    result = reward(_inputs(5))
    assert result.rewards == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert result.scores == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert result.extra_logs == {"qlen": [11.0] * 5}
    assert reward.name == srv.url
    (payload,) = srv.requests
    assert set(payload) == {"query", "prompts", "labels"}  # OpenRLHF's request, nothing more
    assert payload["query"][1] == "q1 answer 1" and payload["prompts"][1] == "q1"
    assert srv.headers[0]["Authorization"] == "Bearer t0ken"
    assert srv.headers[0]["Content-Type"] == "application/json"


@pytest.mark.parametrize("answer", [[0.5, -1.0], {"rewards": [0.5, -1.0]}])
def test_bare_list_and_rewards_only_answers(stub_server, answer):
    srv = stub_server(lambda p, n, s: (200, answer))
    result = RemoteHTTPReward(srv.url)(_inputs(2))
    assert result.rewards == [0.5, -1.0]
    assert result.scores is None and result.extra_logs == {}


def test_send_responses_adds_the_response_texts(stub_server):
    srv = stub_server(lambda p, n, s: (200, [float(len(r)) for r in p["responses"]]))
    assert RemoteHTTPReward(srv.url, send_responses=True)(_inputs(2)).rewards == [9.0, 9.0]
    assert srv.requests[0]["responses"] == [" answer 0", " answer 1"]


def test_batch_split_and_concurrency_keep_the_order(stub_server):
    def slow_echo(payload, n, stub):
        time.sleep(0.15)  # long enough that the chunks overlap
        return _echo_label(payload, n, stub)

    srv = stub_server(slow_echo)
    whole = RemoteHTTPReward(srv.url)(_inputs(10))
    srv.requests.clear()
    srv.peak_inflight = 0
    start = time.perf_counter()
    split = RemoteHTTPReward(srv.url, batch_size=3, concurrency=4)(_inputs(10))
    elapsed = time.perf_counter() - start
    assert split == whole
    assert sorted(len(r["query"]) for r in srv.requests) == [1, 3, 3, 3]
    assert srv.peak_inflight >= 2  # chunks really were in flight together
    assert elapsed < 4 * 0.15  # faster than one after the other

    srv.requests.clear()
    serial = RemoteHTTPReward(srv.url, batch_size=4, concurrency=1)(_inputs(10))
    assert serial == whole and len(srv.requests) == 3


def test_split_merges_scores_and_drops_partial_extra_logs(stub_server):
    def mixed(payload, n, stub):
        k = len(payload["query"])
        if payload["labels"][0] == "0":  # first chunk: scores + two logs
            return 200, {"rewards": [1.0] * k, "scores": [5.0] * k,
                         "extra_logs": {"a": [1] * k, "b": [2] * k}}
        return 200, {"rewards": [0.0] * k, "extra_logs": {"a": [3] * k}}

    srv = stub_server(mixed)
    result = RemoteHTTPReward(srv.url, batch_size=2, concurrency=1)(_inputs(4))
    assert result.rewards == [1.0, 1.0, 0.0, 0.0]
    assert result.scores == [5.0, 5.0, 0.0, 0.0]  # a chunk without scores: its rewards
    assert result.extra_logs == {"a": [1.0, 1.0, 3.0, 3.0]}


def test_empty_batch_makes_no_request(stub_server):
    srv = stub_server(_echo_label)
    assert RemoteHTTPReward(srv.url)(RewardInputs([], [], [], [])).rewards == []
    assert srv.requests == []


# -- failures: each with the right outcome, a bounded attempt count and a clear message ----


def test_timeout_is_retried_a_bounded_number_of_times(stub_server):
    def hang(payload, n, stub):
        stub.release.wait(5)

    srv = stub_server(hang)
    reward = RemoteHTTPReward(srv.url, timeout_s=0.2, max_retries=2, **FAST)
    start = time.perf_counter()
    with pytest.raises(RemoteRewardUnavailable) as info:
        reward(_inputs(2))
    elapsed = time.perf_counter() - start
    msg = str(info.value)
    assert srv.url in msg and "timed out (timeout_s=0.2)" in msg and "after 3 attempts" in msg
    assert info.value.attempts == 3
    assert len(srv.requests) == 3
    assert 0.6 <= elapsed < 0.6 + 2 * 0.05 + 1.0  # 3 timeouts + 2 capped backoffs


def test_total_timeout_bounds_the_wall_clock(stub_server):
    srv = stub_server(lambda p, n, s: s.release.wait(5) and None)
    reward = RemoteHTTPReward(srv.url, timeout_s=0.3, max_retries=50, total_timeout_s=0.8,
                              **FAST)
    start = time.perf_counter()
    with pytest.raises(RemoteRewardUnavailable, match="total_timeout_s=0.8 spent"):
        reward(_inputs(1))
    assert time.perf_counter() - start < 1.6
    assert len(srv.requests) <= 4


def test_refused_connection_is_unavailable_after_retries():
    url = f"http://127.0.0.1:{free_port()}/get_reward"
    reward = RemoteHTTPReward(url, timeout_s=1, max_retries=2, **FAST)
    start = time.perf_counter()
    with pytest.raises(RemoteRewardUnavailable) as info:
        reward(_inputs(3))
    assert time.perf_counter() - start < 1.0
    assert info.value.attempts == 3
    assert str(info.value) == (f"remote reward {url} (rows 0..2): connection refused "
                               "after 3 attempts")


def test_500_then_success_is_retried(stub_server):
    def flaky(payload, n, stub):
        if n <= 2:
            return 500, b"engine warming up"
        return _echo_label(payload, n, stub)

    srv = stub_server(flaky)
    result = RemoteHTTPReward(srv.url, max_retries=3, **FAST)(_inputs(3))
    assert result.rewards == [0.0, 1.0, 2.0]
    assert len(srv.requests) == 3  # two failures, one success, nothing more


def test_persistent_503_gives_up_after_max_retries(stub_server):
    srv = stub_server(lambda p, n, s: (503, b"overloaded"))
    with pytest.raises(RemoteRewardUnavailable) as info:
        RemoteHTTPReward(srv.url, max_retries=2, **FAST)(_inputs(1))
    assert len(srv.requests) == 3 and info.value.attempts == 3 and info.value.status == 503
    assert "HTTP 503 Service Unavailable: 'overloaded' after 3 attempts" in str(info.value)


def test_429_honours_retry_after(stub_server):
    def limited(payload, n, stub):
        if n == 1:
            return 429, b"slow down", {"Retry-After": "0.2"}
        return _echo_label(payload, n, stub)

    srv = stub_server(limited)
    start = time.perf_counter()
    result = RemoteHTTPReward(srv.url, max_retries=1, backoff_s=0.0, max_backoff_s=1.0)(
        _inputs(2))
    assert result.rewards == [0.0, 1.0] and len(srv.requests) == 2
    assert time.perf_counter() - start >= 0.2


def test_400_is_not_retried(stub_server):
    srv = stub_server(lambda p, n, s: (400, {"detail": "labels missing"}))
    with pytest.raises(RemoteRewardRejected) as info:
        RemoteHTTPReward(srv.url, max_retries=5, **FAST)(_inputs(2))
    assert len(srv.requests) == 1 and info.value.attempts == 1 and info.value.status == 400
    msg = str(info.value)
    assert srv.url in msg and "HTTP 400 Bad Request" in msg and "labels missing" in msg
    assert "after 1 attempt" in msg


def test_redirect_is_refused_with_the_location(stub_server):
    srv = stub_server(lambda p, n, s: (308, b"", {"Location": "http://elsewhere:1/r"}))
    with pytest.raises(RemoteRewardRejected, match=r"HTTP 308 .*redirects to "
                       r"'http://elsewhere:1/r'; use that URL\) after 1 attempt"):
        RemoteHTTPReward(srv.url, **FAST)(_inputs(1))
    assert len(srv.requests) == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        (b"<html>oops</html>", "answer is not JSON"),
        ({"rewards": [1.0, 2.0]}, "answer.rewards: expected 3 values (one per sample), got 2"),
        ({"rewards": [1.0, math.nan, 0.0]}, "answer.rewards[1]: is nan; rewards must be finite"),
        ({"reward": [1, 2, 3]}, "answer: result has no 'rewards' key"),
        ({"rewards": [1, 2, 3], "scores": ["a", 1, 2]}, "answer.scores: expected 3 numbers"),
        ({"rewards": [1, 2, 3], "extra_logs": {"x": [1]}}, "answer.extra_logs.x: expected 3"),
        ({"rewards": [1, 2, 3], "extra_logs": [1, 2, 3]}, "answer.extra_logs: expected an obj"),
        (b"null", "answer.rewards: expected 3 numbers, got NoneType"),
    ],
)
def test_malformed_answers_are_clear_errors_never_retried(stub_server, body, expected):
    srv = stub_server(lambda p, n, s: (200, body))
    with pytest.raises(RemoteRewardBadResponse) as info:
        RemoteHTTPReward(srv.url, max_retries=3, **FAST)(_inputs(3))
    msg = str(info.value)
    assert expected in msg and srv.url in msg and "after 1 attempt" in msg
    assert len(srv.requests) == 1


def test_a_failing_chunk_names_its_rows(stub_server):
    def third_chunk_broken(payload, n, stub):
        if payload["labels"][0] == "4":
            return 200, {"rewards": [1.0]}
        return _echo_label(payload, n, stub)

    srv = stub_server(third_chunk_broken)
    with pytest.raises(RemoteRewardBadResponse, match=r"\(rows 4\.\.5\): answer.rewards: "
                       r"expected 2 values"):
        RemoteHTTPReward(srv.url, batch_size=2, concurrency=3)(_inputs(6))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"url": "ftp://x/y"}, "url: expected http"),
        ({"url": "localhost:8000"}, "url: expected http"),
        ({"timeout_s": 0}, "timeout_s: must be > 0"),
        ({"max_retries": -1}, "max_retries: must be >= 0"),
        ({"batch_size": -2}, "batch_size: must be >= 0"),
        ({"concurrency": 0}, "concurrency: must be >= 1"),
        ({"backoff_s": -1}, "backoff_s"),
        ({"total_timeout_s": 0}, "total_timeout_s"),
    ],
)
def test_bad_settings_are_refused(kwargs, match):
    kwargs = {"url": "http://127.0.0.1:1/r", **kwargs}
    with pytest.raises(ValueError, match=match):
        RemoteHTTPReward(kwargs.pop("url"), **kwargs)


# -- through the reward role -------------------------------------------------------------


def test_servicer_maps_remote_failures_to_status_codes(stub_server):
    srv = stub_server(lambda p, n, s: (200, b"not json"))
    dead = f"http://127.0.0.1:{free_port()}/r"
    servers = []
    try:
        clients = {}
        for name, url in (("bad", srv.url), ("dead", dead)):
            role = RoleServer("reward", port=0)
            role.start()
            reward_pb2_grpc.add_RewardServicer_to_server(
                RewardServicer(RemoteHTTPReward(url, max_retries=1, **FAST), "http"),
                role.grpc_server)
            role.set_serving(True)
            servers.append(role)
            clients[name] = GrpcRewardClient(role.address, timeout_s=30)
        with pytest.raises(RoleCallError) as info:
            clients["bad"].score(_inputs(2))
        assert info.value.code == grpc.StatusCode.INTERNAL
        assert f"remote reward {srv.url}" in str(info.value) and "not JSON" in str(info.value)
        with pytest.raises(RoleCallError) as info:
            clients["dead"].score(_inputs(2))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"remote reward {dead}" in str(info.value)
        assert "connection refused after 2 attempts" in str(info.value)
    finally:
        for s in servers:
            s.stop(0)


def test_quartet_serve_reward_remote_url_subprocess(stub_server, tmp_path):
    srv = stub_server(_echo_label)
    port_file = tmp_path / "reward.port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "quartet.cli.main", "serve", "reward", "--port", "0",
         "--port-file", str(port_file), "--remote-url", srv.url, "--remote-timeout-s", "2",
         "--remote-retries", "1", "--remote-batch-size", "2", "--remote-concurrency", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        address = f"127.0.0.1:{int(port_file.read_text())}"
        wait_for_serving(address, timeout_s=60, process=proc, what="reward")
        client = GrpcRewardClient(address, timeout_s=30)
        assert client.info().backend == "http" and client.info().model == srv.url

        result = client.score(_inputs(5))
        assert result.rewards == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert result.scores == [0.0, 2.0, 4.0, 6.0, 8.0]
        assert result.extra_logs == {"qlen": [11.0] * 5}
        assert sorted(len(r["query"]) for r in srv.requests) == [1, 2, 2]

        srv.close()  # the remote goes down: UNAVAILABLE naming the URL, not a zero reward
        with pytest.raises(RoleCallError) as info:
            client.score(_inputs(2))
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
        assert f"remote reward {srv.url}" in str(info.value)
        assert "after 2 attempts" in str(info.value)
        client.close()
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out
