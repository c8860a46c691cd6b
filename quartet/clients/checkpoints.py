"""Save, Load and PrepareRun, the calls the actor and critic clients share (same messages,
same RPCs)."""

from __future__ import annotations

from quartet.v1 import common_pb2


class CheckpointCalls:
    """Mixin for a `GrpcRoleClient` whose stub has `Save`, `Load` and `PrepareRun`."""

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

    def prepare_run(self, run_id: str, train: common_pb2.TrainSettings
                    ) -> common_pb2.PrepareRunResponse:
        """Announces a run and its settings; a mismatch fails with FAILED_PRECONDITION
        naming the field."""
        return self._call("PrepareRun", self.stub.PrepareRun,  # type: ignore[attr-defined]
                          common_pb2.PrepareRunRequest(
                              header=common_pb2.RequestHeader(run_id=run_id), train=train))
