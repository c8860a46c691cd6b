"""A dead or unreachable service surfaces as one clear error naming role, address and RPC."""

import grpc
import pytest
import torch

from quartet.clients.base import RoleCallError
from quartet.clients.reference import GrpcReferenceClient
from quartet.codec import RowBatch
from quartet.weightsync import free_port


def test_unreachable_service_names_role_address_and_rpc():
    address = f"127.0.0.1:{free_port()}"
    client = GrpcReferenceClient(address, timeout_s=3)
    with pytest.raises(RoleCallError) as info:
        client.logprobs(RowBatch([torch.tensor([1, 2, 3])], [1]))
    err = info.value
    assert err.code == grpc.StatusCode.UNAVAILABLE
    assert f"reference at {address}: LogProbs failed with UNAVAILABLE" in str(err)
    assert "is the service running" in str(err)
