"""Reading spans back: quartet's JSONL (one span per line, from `configure_tracing`) and the
OpenTelemetry collector's file exporter format (one OTLP/JSON `resourceSpans` export per
line), into one `Span` shape for `quartet trace`."""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Span:
    name: str
    trace_id: str
    span_id: str
    parent_id: str | None
    kind: str
    start_ns: int
    end_ns: int
    role: str
    replica: str
    status: str = "UNSET"
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def row(self) -> str:
        """The timeline row: one per service and replica."""
        if not self.replica or self.replica == self.role:
            return self.role
        return self.replica if self.replica.startswith(self.role) else (
            f"{self.role} {self.replica}")


def _otlp_value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    return json.dumps(value)


def _otlp_id(raw: str) -> str:
    """The collector writes ids as hex; OTLP/JSON from some SDKs as base64."""
    if not raw:
        return ""
    try:
        int(raw, 16)
        return raw.lower()
    except ValueError:
        return base64.b64decode(raw).hex()


_OTLP_KINDS = {1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _from_otlp(export: dict[str, Any]) -> list[Span]:
    spans = []
    for rs in export.get("resourceSpans", []):
        res = {a["key"]: _otlp_value(a["value"])
               for a in rs.get("resource", {}).get("attributes", [])}
        role = str(res.get("quartet.role", res.get("service.name", "?")))
        replica = str(res.get("quartet.replica", ""))
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                kind = s.get("kind", 1)
                spans.append(Span(
                    name=s["name"], trace_id=_otlp_id(s["traceId"]),
                    span_id=_otlp_id(s["spanId"]),
                    parent_id=_otlp_id(s.get("parentSpanId", "")) or None,
                    kind=_OTLP_KINDS.get(kind, str(kind)) if isinstance(kind, int)
                    else str(kind).removeprefix("SPAN_KIND_"),
                    start_ns=int(s["startTimeUnixNano"]), end_ns=int(s["endTimeUnixNano"]),
                    role=role, replica=replica,
                    status=str(s.get("status", {}).get("code", "UNSET")),
                    attributes={a["key"]: _otlp_value(a["value"])
                                for a in s.get("attributes", [])}))
    return spans


def read_spans(path: str | Path) -> list[Span]:
    """Every span in the file, sorted by start time; a line cut short by a kill is skipped."""
    spans: list[Span] = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "resourceSpans" in record:
                spans.extend(_from_otlp(record))
            else:
                spans.append(Span(**record))
    return sorted(spans, key=lambda s: s.start_ns)


def traces(spans: list[Span]) -> dict[str, list[Span]]:
    by_trace: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        by_trace[s.trace_id].append(s)
    return dict(by_trace)


def iteration_roots(spans: list[Span]) -> list[Span]:
    """The root span of each PPO iteration, in order."""
    roots = [s for s in spans if s.name == "iteration" and s.parent_id is None]
    return sorted(roots, key=lambda s: s.start_ns)
