"""A standalone OpenRLHF-style HTTP reward server, written with the standard library only.

The same math verifier as `math_verifier_grpc.py`: the reward of a response is 1.0 when the
last number in it equals the label's (last) number, else 0.0.

    python examples/reward_servers/math_verifier_http.py --port 8000
    quartet serve reward --remote-url http://127.0.0.1:8000/get_reward --port 50053
    quartet ppo ... --data.label_key answer --reward.address 127.0.0.1:50053

The contract (OpenRLHF's remote reward model): `POST` any path with JSON
`{"query": [...], "prompts": [...], "labels": [...]}` (query = prompt + response); answer
`{"rewards": [...], "scores": [...], "extra_logs": {name: [...]}}` with one value per sample.
Bad requests get HTTP 400 with a message (never retried by quartet); `GET /health` answers 200.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")
MAX_BODY_BYTES = 64 << 20


def last_number(text: str) -> float | None:
    """The last number in `text` ('1,234.5', '-3', '3/4' -> 0.75), or None."""
    matches = NUMBER.findall(text or "")
    if not matches:
        return None
    token = matches[-1].replace(",", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        return float(token)
    except ValueError:
        return None


def verify(response: str, label: str) -> tuple[float, float]:
    """(reward, found): 1.0 when the response's last number equals the label's."""
    got, want = last_number(response), last_number(label)
    if got is None or want is None:
        return 0.0, float(got is not None)
    return float(abs(got - want) <= 1e-6 * max(1.0, abs(want))), 1.0


def score(payload: object) -> dict:
    """The JSON answer for one request body; ValueError names what is wrong."""
    if not isinstance(payload, dict):
        raise ValueError("body: expected a JSON object {query, prompts, labels}")
    queries = payload.get("query")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise ValueError("query: expected a list of strings")
    n = len(queries)
    prompts = payload.get("prompts") or [""] * n
    labels = payload.get("labels")
    responses = payload.get("responses") or [""] * n
    if not isinstance(labels, list) or len(labels) != n:
        raise ValueError(f"labels: expected {n} reference answers, got "
                         f"{len(labels) if isinstance(labels, list) else type(labels).__name__}")
    if not isinstance(prompts, list) or len(prompts) != n:
        raise ValueError(f"prompts: expected {n} entries")
    if not isinstance(responses, list) or len(responses) != n:
        raise ValueError(f"responses: expected {n} entries")
    rewards, found = [], []
    for q, p, r, label in zip(queries, prompts, responses, labels, strict=True):
        text = r or (q[len(p):] if p and q.startswith(p) else q)
        reward, f = verify(str(text), str(label))
        rewards.append(reward)
        found.append(f)
    return {"rewards": rewards, "scores": rewards, "extra_logs": {"answer_found": found}}


class Handler(BaseHTTPRequestHandler):
    server_version = "math-verifier/1"
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/health", "/healthz"):
            self._send(200, {"status": "ok"})
        else:
            self._send(404, {"error": f"no GET {self.path}; POST rewards requests"})

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY_BYTES:
            self._send(400, {"error": "Content-Length: expected a JSON body"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
            self._send(200, score(payload))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            self._send(400, {"error": str(exc)})

    def log_message(self, format: str, *args) -> None:
        pass  # one line per request is too chatty for a training run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 picks a free one)")
    parser.add_argument("--port-file", default=None, help="write the bound port here")
    args = parser.parse_args(argv)

    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    httpd.daemon_threads = True
    port = httpd.server_address[1]
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{port}\n")
    print(f"math verifier (HTTP) listening on http://{args.host}:{port}", flush=True)

    def _stop(signum, _frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
