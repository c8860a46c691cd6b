"""Actor -> rollout weight transfer: a bucketed broadcast data plane over a
`torch.distributed` group (NCCL on GPU, gloo on CPU) formed outside any trainer world,
and a gRPC-streamed fallback for when no group can be formed.

The control plane (begin with version and manifest, finish) is the rollout's gRPC
contract; this package moves the bytes.
"""

from quartet.ports import free_port
from quartet.weightsync.buckets import DEFAULT_BUCKET_BYTES, Bucket, plan_buckets
from quartet.weightsync.errors import WeightGroupAborted, WeightSyncError
from quartet.weightsync.group import (
    WeightGroup,
    WeightGroupConfig,
    abort_weight_group,
    advertised_host,
    check_group_bounds,
    host_store,
    init_weight_group,
)
from quartet.weightsync.session import (
    TransferStats,
    WeightReceiver,
    WeightSender,
    receive_staged,
)
from quartet.weightsync.specs import TensorSpec, manifest_digest, specs_of

__all__ = [
    "DEFAULT_BUCKET_BYTES",
    "Bucket",
    "TensorSpec",
    "TransferStats",
    "WeightGroup",
    "WeightGroupConfig",
    "WeightGroupAborted",
    "WeightReceiver",
    "WeightSender",
    "WeightSyncError",
    "abort_weight_group",
    "advertised_host",
    "check_group_bounds",
    "free_port",
    "host_store",
    "init_weight_group",
    "manifest_digest",
    "plan_buckets",
    "receive_staged",
    "specs_of",
]
