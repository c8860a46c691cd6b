"""Save and Load, the calls the actor and critic clients share (same messages, same RPCs)."""

from __future__ import annotations

from quartet.v1 import common_pb2


class CheckpointCalls:
    """Mixin for a `GrpcRoleClient` whose stub has `Save` and `Load`."""

    def save(self, output_dir: str, hf_export: bool = True, tag: str = "",
             hf_only: bool = False) -> common_pb2.SaveResponse:
        return self._call("Save", self.stub.Save,  # type: ignore[attr-defined]
                          common_pb2.SaveRequest(output_dir=output_dir, hf_export=hf_export,
                                                 tag=tag, hf_only=hf_only))

    def load(self, checkpoint_dir: str, tag: str) -> int:
        """Restores a checkpoint `save` wrote; returns the restored optimizer step."""
        resp = self._call("Load", self.stub.Load,  # type: ignore[attr-defined]
                          common_pb2.LoadRequest(checkpoint_dir=checkpoint_dir, tag=tag))
        return int(resp.global_step)
