"""The Redis schema of quartet's registry, in one place.

- ``quartet:svc:<role>:<replica>``: a hash per live service (role, replica, address, weight
  version, health, load, updated_at) that expires unless its heartbeat renews it, so a
  replica that dies without deregistering disappears after its TTL.
- ``quartet:run:<run_id>``: a hash per run (iteration, policy version, last checkpoint,
  status, ...), and the set ``quartet:runs`` of run ids.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields

import redis

PREFIX = "quartet"


@dataclass(frozen=True)
class ServiceRecord:
    role: str
    replica: str
    address: str
    weight_version: int = -1
    """Policy version the replica serves (rollout) or has trained to (actor); -1 unknown."""
    health: str = "NOT_SERVING"
    load: int = 0
    """Requests in flight."""
    updated_at: float = 0.0

    @property
    def serving(self) -> bool:
        return self.health == "SERVING"

    @staticmethod
    def from_hash(values: dict[str, str]) -> ServiceRecord:
        kinds = {f.name: f.type for f in fields(ServiceRecord)}
        out = {}
        for name, value in values.items():
            if name in kinds:
                kind = kinds[name]
                out[name] = (int(value) if kind == "int" else float(value) if kind == "float"
                             else value)
        return ServiceRecord(**out)


class Registry:
    """A connection to the registry at `url` (redis://host:port/db)."""

    def __init__(self, url: str, socket_timeout_s: float = 5.0) -> None:
        self.url = url
        self.redis = redis.Redis.from_url(url, decode_responses=True,
                                          socket_timeout=socket_timeout_s,
                                          socket_connect_timeout=socket_timeout_s)

    # ------------------------------------------------------------------ services
    @staticmethod
    def service_key(role: str, replica: str) -> str:
        return f"{PREFIX}:svc:{role}:{replica}"

    def register(self, record: ServiceRecord, ttl_s: float) -> None:
        key = self.service_key(record.role, record.replica)
        values = {k: str(v) for k, v in asdict(record).items()}
        values["updated_at"] = repr(time.time())
        with self.redis.pipeline() as pipe:
            pipe.hset(key, mapping=values)
            pipe.pexpire(key, int(ttl_s * 1000))
            pipe.execute()

    def deregister(self, role: str, replica: str) -> None:
        self.redis.delete(self.service_key(role, replica))

    def services(self, role: str | None = None) -> list[ServiceRecord]:
        """Live services (of one role), sorted by role then replica id."""
        pattern = f"{PREFIX}:svc:{role or '*'}:*"
        keys = sorted(self.redis.scan_iter(match=pattern, count=500))
        if not keys:
            return []
        with self.redis.pipeline() as pipe:
            for key in keys:
                pipe.hgetall(key)
            hashes = pipe.execute()
        records = [ServiceRecord.from_hash(h) for h in hashes if h]
        return sorted(records, key=lambda r: (r.role, r.replica))

    # ------------------------------------------------------------------ runs
    def write_run(self, run_id: str, **state: object) -> None:
        values = {k: str(v) for k, v in state.items() if v is not None}
        values["run_id"] = run_id
        values["updated_at"] = repr(time.time())
        with self.redis.pipeline() as pipe:
            pipe.hset(f"{PREFIX}:run:{run_id}", mapping=values)
            pipe.sadd(f"{PREFIX}:runs", run_id)
            pipe.execute()

    def run(self, run_id: str) -> dict[str, str]:
        return self.redis.hgetall(f"{PREFIX}:run:{run_id}")

    def runs(self) -> list[dict[str, str]]:
        """Every recorded run's state, most recently updated first."""
        ids = sorted(self.redis.smembers(f"{PREFIX}:runs"))
        states = [self.run(i) for i in ids]
        return sorted((s for s in states if s), key=lambda s: -float(s.get("updated_at", 0)))

    def close(self) -> None:
        self.redis.close()
