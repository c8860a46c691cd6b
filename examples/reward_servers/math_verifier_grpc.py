"""A standalone external reward service implementing quartet's reward contract over gRPC.

A math verifier: the reward of a response is 1.0 when the last number in it equals the
label's (last) number, else 0.0. It needs only grpcio, grpcio-health-checking and quartet's
generated stubs (`quartet.v1.reward_pb2`, `reward_pb2_grpc`, `common_pb2`), so a team can copy
it, replace `verify()` with their own check and run it anywhere:

    python examples/reward_servers/math_verifier_grpc.py --port 50070
    quartet ppo ... --data.label_key answer --reward.address 127.0.0.1:50070

The contract (proto/quartet/v1/reward.proto): `Score` is a bidirectional stream of row
slices; answer one `ScoreResponse` per `ScoreRequest`, in order, with the request's
`row_offset` and exactly one reward per sample. Report bad input with INVALID_ARGUMENT and a
message naming the field. Serve standard gRPC health (SERVING once ready).
"""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from quartet.v1 import common_pb2, reward_pb2, reward_pb2_grpc

SERVICE_NAME = "quartet.v1.Reward"
NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")

log = logging.getLogger("math_verifier")


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


def response_text(query: str, prompt: str, response: str) -> str:
    """The response; from the full query minus its prompt when responses were not sent."""
    if response:
        return response
    return query[len(prompt):] if prompt and query.startswith(prompt) else query


class MathVerifier(reward_pb2_grpc.RewardServicer):
    def Score(self, request_iterator, context):
        for req in request_iterator:
            n = len(req.queries)
            for name in ("prompts", "responses", "labels"):
                got = len(getattr(req, name))
                if got not in (0, n):
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                  f"{name}: has {got} entries for {n} queries")
            if n and not req.labels:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "labels: the math verifier needs one reference answer per sample "
                              "(quartet ppo --data.label_key KEY)")
            rewards, found = [], []
            for i in range(n):
                text = response_text(req.queries[i], req.prompts[i] if req.prompts else "",
                                     req.responses[i] if req.responses else "")
                r, f = verify(text, req.labels[i])
                rewards.append(r)
                found.append(f)
            yield reward_pb2.ScoreResponse(
                row_offset=req.row_offset, rewards=rewards, scores=rewards,
                extra_logs=[reward_pb2.ExtraLog(name="answer_found", values=found)])

    def GetInfo(self, request, context):
        return common_pb2.ServiceInfo(role="reward", model="math-verifier",
                                      backend="external-grpc")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=50070, help="port (0 picks a free one)")
    parser.add_argument("--port-file", default=None, help="write the bound port here")
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers))
    reward_pb2_grpc.add_RewardServicer_to_server(MathVerifier(), server)
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    host = f"[{args.host}]" if ":" in args.host else args.host
    port = server.add_insecure_port(f"{host}:{args.port}")
    if port == 0:
        print(f"cannot bind {args.host}:{args.port}", file=sys.stderr)
        return 1
    server.start()
    for name in ("", SERVICE_NAME):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    if args.port_file:
        with open(args.port_file, "w") as f:
            f.write(f"{port}\n")
    print(f"math verifier (gRPC) listening on {args.host}:{port}", flush=True)

    stopped = threading.Event()

    def _stop(signum, _frame):
        log.info("got %s, shutting down", signal.Signals(signum).name)
        health_servicer.enter_graceful_shutdown()
        stopped.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stopped.wait(0.5):
        pass
    server.stop(5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
