"""Rewards from an OpenRLHF-style HTTP reward server.

The contract (OpenRLHF's remote reward model): POST a JSON object

    {"query": [prompt + response, ...], "prompts": [...], "labels": [...]}

and receive either `{"rewards": [...], "scores": [...]?, "extra_logs": {name: [...]}?}` or
a bare list of rewards. `RemoteHTTPReward` is a reward source like `RuleReward`: the reward
role serves it (`quartet serve reward --remote-url URL`), so the trainer only ever talks
quartet's gRPC contract.

Failures are explicit: an unreachable server, a timeout, a 5xx or a 429 is retried a bounded
number of times with exponential backoff and jitter, then raises `RemoteRewardUnavailable`;
a 4xx raises `RemoteRewardRejected` at once; a malformed answer (not JSON, wrong count,
non-finite values) raises `RemoteRewardBadResponse`. Every message names the URL, the rows,
the attempts made and what was wrong. Nothing is ever replaced by a default reward.

Only the standard library is used (`urllib.request`); environment HTTP proxies are ignored
(reward servers live next to the trainer; a proxy in between is usually a misconfiguration).
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

from quartet.rewards.base import RewardInputs, RewardResult, check_inputs, normalize_result

log = logging.getLogger("quartet.rewards.http")

# Statuses worth another attempt: the server is overloaded, restarting or behind a proxy
# that could not reach it. Every other 4xx is the request's fault and is never retried.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504}) | frozenset(range(505, 600))
MAX_RESPONSE_BYTES = 64 << 20
_BODY_SNIPPET = 200


class RemoteRewardError(RuntimeError):
    """A remote reward call failed; the message names the URL, rows and attempts."""

    def __init__(self, url: str, attempts: int, what: str, rows: tuple[int, int] | None = None,
                 status: int | None = None) -> None:
        where = f" (rows {rows[0]}..{rows[1] - 1})" if rows is not None else ""
        plural = "s" if attempts != 1 else ""
        super().__init__(f"remote reward {url}{where}: {what} after {attempts} "
                         f"attempt{plural}")
        self.url, self.attempts, self.what, self.rows, self.status = (
            url, attempts, what, rows, status)


class RemoteRewardUnavailable(RemoteRewardError):
    """Unreachable, timed out, 5xx or 429 on every attempt (worth retrying later)."""


class RemoteRewardRejected(RemoteRewardError):
    """The server refused the request with a 4xx (other than 429); never retried."""


class RemoteRewardBadResponse(RemoteRewardError):
    """The server answered 2xx with something that is not a valid reward result."""


class _Transient(Exception):
    def __init__(self, what: str, status: int | None = None,
                 retry_after_s: float | None = None) -> None:
        super().__init__(what)
        self.what, self.status, self.retry_after_s = what, status, retry_after_s


def _snippet(body: bytes) -> str:
    text = body[:_BODY_SNIPPET].decode("utf-8", "replace").strip().replace("\n", " ")
    return f": {text!r}" if text else ""


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None


def _describe(exc: BaseException, timeout_s: float) -> str:
    reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, TimeoutError):
        return f"timed out (timeout_s={timeout_s:g})"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve host ({reason})"
    return f"connection failed ({type(reason).__name__}: {reason})"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """urllib turns a redirected POST into a GET without the body; refuse redirects instead
    (the error names the Location to configure)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class RemoteHTTPReward:
    """A reward source backed by an OpenRLHF-style HTTP reward server.

    Args:
        url: the endpoint to POST to (e.g. ``http://verifier:8000/get_reward``).
        timeout_s: per-attempt socket timeout (connect, and each read of the answer).
        max_retries: extra attempts after the first on a connection error, timeout, 5xx
            or 429 (0 disables retries). A 4xx or a malformed answer is never retried.
        batch_size: rows per HTTP request; a larger batch is split in order (0: one request
            for the whole batch, as OpenRLHF does; keep it 0 for judges that compare the
            samples of a group with each other).
        concurrency: chunks in flight at once (a thread pool) when the batch is split.
        backoff_s: first retry delay; doubles each retry, capped at ``max_backoff_s``, and
            jittered to 50-100% of that value. A ``Retry-After`` header (429/503) is honoured
            up to ``max_backoff_s``.
        total_timeout_s: optional wall-clock budget per chunk across all attempts; no new
            attempt starts after it and the last one's timeout is shortened to fit.
        headers: extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
        send_responses: also send ``"responses"`` (the response texts) in the JSON body.

    Without ``total_timeout_s`` one chunk takes at most about
    ``(max_retries + 1) * timeout_s + max_retries * max_backoff_s`` before it fails.
    """

    def __init__(self, url: str, *, timeout_s: float = 30.0, max_retries: int = 3,
                 batch_size: int = 0, concurrency: int = 4, backoff_s: float = 0.5,
                 max_backoff_s: float = 8.0, total_timeout_s: float | None = None,
                 headers: Mapping[str, str] | None = None,
                 send_responses: bool = False) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url: expected http(s)://host[:port]/path, got {url!r}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {timeout_s}")
        if not (backoff_s >= 0 and max_backoff_s >= 0):
            raise ValueError(f"backoff_s, max_backoff_s: must be >= 0, got {backoff_s}, "
                             f"{max_backoff_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries: must be >= 0, got {max_retries}")
        if batch_size < 0:
            raise ValueError(f"batch_size: must be >= 0 (0 = no split), got {batch_size}")
        if concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1, got {concurrency}")
        if total_timeout_s is not None and total_timeout_s <= 0:
            raise ValueError(f"total_timeout_s: must be > 0, got {total_timeout_s}")
        self.url = url
        self.name = url
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.total_timeout_s = total_timeout_s
        self.headers = {"Content-Type": "application/json", "Accept": "application/json",
                        **dict(headers or {})}
        self.send_responses = send_responses
        # No ProxyHandler from the environment: connect to the reward server directly.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   _NoRedirect())
        self._rng = random.Random()

    def __repr__(self) -> str:
        return (f"RemoteHTTPReward({self.url!r}, timeout_s={self.timeout_s:g}, "
                f"max_retries={self.max_retries}, batch_size={self.batch_size}, "
                f"concurrency={self.concurrency})")

    # -- one chunk ------------------------------------------------------------------------

    def _body(self, inputs: RewardInputs, s: int, e: int) -> bytes:
        payload = {"query": inputs.queries[s:e], "prompts": inputs.prompts[s:e],
                   "labels": inputs.labels[s:e]}
        if self.send_responses:
            payload["responses"] = inputs.responses[s:e]
        return json.dumps(payload, ensure_ascii=False).encode("utf-8")

    def _attempt(self, body: bytes, timeout_s: float) -> bytes:
        """One POST; returns the 2xx body, raises _Transient or RemoteRewardRejected(0)."""
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with self._opener.open(req, timeout=timeout_s) as resp:
                data = resp.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as exc:
            try:
                detail = _snippet(exc.read())
            except (OSError, http.client.HTTPException):
                detail = ""
            what = f"HTTP {exc.code} {exc.reason}{detail}"
            if 300 <= exc.code < 400:
                what += f" (redirects to {exc.headers.get('Location')!r}; use that URL)"
            if exc.code in RETRY_STATUSES:
                raise _Transient(what, exc.code, _retry_after(exc.headers)) from None
            raise RemoteRewardRejected(self.url, 0, what, status=exc.code) from None
        except (urllib.error.URLError, OSError) as exc:
            raise _Transient(_describe(exc, timeout_s)) from None
        except http.client.HTTPException as exc:  # e.g. IncompleteRead, BadStatusLine
            raise _Transient(f"broken HTTP answer ({type(exc).__name__}: {exc})") from None
        if len(data) > MAX_RESPONSE_BYTES:
            raise RemoteRewardBadResponse(self.url, 0, f"answer larger than "
                                          f"{MAX_RESPONSE_BYTES >> 20} MiB")
        return data

    def _delay(self, retry: int, retry_after_s: float | None) -> float:
        if retry_after_s is not None:
            return min(retry_after_s, self.max_backoff_s)
        base = min(self.max_backoff_s, self.backoff_s * (2 ** (retry - 1)))
        return base * self._rng.uniform(0.5, 1.0)

    def _post(self, body: bytes, rows: tuple[int, int]) -> tuple[bytes, int]:
        """POSTs with bounded retries; returns (2xx body, attempts used)."""
        deadline = (time.monotonic() + self.total_timeout_s
                    if self.total_timeout_s is not None else None)
        attempt = 0
        while True:
            attempt += 1
            timeout_s = self.timeout_s
            if deadline is not None:
                timeout_s = max(0.05, min(timeout_s, deadline - time.monotonic()))
            try:
                return self._attempt(body, timeout_s), attempt
            except RemoteRewardError as exc:  # 4xx / oversize: final, not retried
                raise type(exc)(self.url, attempt, exc.what, rows, exc.status) from None
            except _Transient as exc:
                failure = exc
            if attempt > self.max_retries:
                raise RemoteRewardUnavailable(self.url, attempt, failure.what, rows,
                                              failure.status)
            delay = self._delay(attempt, failure.retry_after_s)
            if deadline is not None and time.monotonic() + delay >= deadline:
                raise RemoteRewardUnavailable(
                    self.url, attempt, f"{failure.what}; total_timeout_s="
                    f"{self.total_timeout_s:g} spent", rows, failure.status)
            log.warning("remote reward %s (rows %d..%d): %s; retry %d/%d in %.2fs", self.url,
                        rows[0], rows[1] - 1, failure.what, attempt, self.max_retries, delay)
            time.sleep(delay)

    def _score_chunk(self, inputs: RewardInputs, s: int, e: int) -> RewardResult:
        data, attempts = self._post(self._body(inputs, s, e), (s, e))
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RemoteRewardBadResponse(
                self.url, attempts, f"answer is not JSON ({exc}){_snippet(data)}",
                (s, e)) from None
        if isinstance(raw, dict) and raw.get("extra_logs") is not None and not isinstance(
                raw["extra_logs"], dict):
            raise RemoteRewardBadResponse(
                self.url, attempts, "answer.extra_logs: expected an object {name: [values]}, "
                f"got {type(raw['extra_logs']).__name__}", (s, e))
        try:
            return normalize_result(raw, e - s, "answer")
        except (ValueError, TypeError, AttributeError) as exc:
            raise RemoteRewardBadResponse(self.url, attempts, str(exc), (s, e)) from None

    # -- a batch --------------------------------------------------------------------------

    def _chunks(self, n: int) -> list[tuple[int, int]]:
        size = self.batch_size or n
        return [(s, min(s + size, n)) for s in range(0, n, size)]

    def __call__(self, inputs: RewardInputs) -> RewardResult:
        n = len(inputs)
        if n == 0:
            return RewardResult([], None, {})
        check_inputs(inputs)
        chunks = self._chunks(n)
        if len(chunks) == 1 or self.concurrency == 1:
            parts = [self._score_chunk(inputs, s, e) for s, e in chunks]
        else:
            pool = ThreadPoolExecutor(min(self.concurrency, len(chunks)),
                                      thread_name_prefix="remote-reward")
            try:
                futures = [pool.submit(self._score_chunk, inputs, s, e) for s, e in chunks]
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:  # the first failure in row order, then the results
                    if f.done() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
                parts = [f.result() for f in futures]
            finally:
                # On failure, do not wait for chunks still in flight (each is bounded by
                # its own timeout and retries); queued ones are cancelled.
                pool.shutdown(wait=False, cancel_futures=True)
        return self._merge(parts, chunks)

    def _merge(self, parts: list[RewardResult], chunks: list[tuple[int, int]]) -> RewardResult:
        if len(parts) == 1:
            return parts[0]
        rewards = [r for p in parts for r in p.rewards]
        scores = None
        if any(p.scores is not None for p in parts):  # a chunk without scores: its rewards
            scores = [x for p in parts for x in (p.scores if p.scores is not None
                                                 else p.rewards)]
        keys = [k for k in parts[0].extra_logs if all(k in p.extra_logs for p in parts)]
        dropped = {k for p in parts for k in p.extra_logs} - set(keys)
        if dropped:
            log.warning("remote reward %s: extra_logs %s missing from some of %d chunks; "
                        "not logged", self.url, sorted(dropped), len(chunks))
        extra = {k: [x for p in parts for x in p.extra_logs[k]] for k in keys}
        return RewardResult(rewards, scores, extra)
