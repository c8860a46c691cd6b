"""Service discovery and run state in Redis (cluster mode): services announce themselves with
a TTL heartbeat, the coordinator finds replicas and records where each run stands."""

from quartet.registry.heartbeat import RegistryHeartbeat
from quartet.registry.redis_registry import Registry, ServiceRecord

__all__ = ["Registry", "RegistryHeartbeat", "ServiceRecord"]
