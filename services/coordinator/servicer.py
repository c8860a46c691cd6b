"""Coordinator role's gRPC servicer: runs as a service (StartRun/GetRun/WatchRun/StopRun)."""

from __future__ import annotations

from quartet.v1 import coordinator_pb2, coordinator_pb2_grpc
from services.coordinator.runs import Run, RunEvent, RunManager


def status_of(run: Run) -> coordinator_pb2.RunStatus:
    return coordinator_pb2.RunStatus(
        run_id=run.run_id, state=coordinator_pb2.RunState.Value(f"RUN_STATE_{run.state}"),
        iteration=run.iteration, total_iterations=run.total_iterations,
        policy_version=run.policy_version, message=run.message,
        last_metrics=run.last_metrics,
    )


def event_of(run: Run, e: RunEvent) -> coordinator_pb2.RunEvent:
    return coordinator_pb2.RunEvent(
        run_id=run.run_id, iteration=e.iteration, phase=e.phase, seconds=e.seconds,
        metrics=e.metrics, state=coordinator_pb2.RunState.Value(f"RUN_STATE_{e.state}"),
        message=e.message,
    )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, runs: RunManager) -> None:
        self.runs = runs

    def StartRun(self, request, context):
        run = self.runs.start(request.config_yaml, request.run_id)
        return coordinator_pb2.StartRunResponse(run_id=run.run_id)

    def GetRun(self, request, context):
        return status_of(self.runs.get(request.run_id))

    def WatchRun(self, request, context):
        run = self.runs.get(request.run_id)
        for event in self.runs.watch(request.run_id, context.is_active):
            yield event_of(run, event)

    def StopRun(self, request, context):
        return status_of(self.runs.stop(request.run_id, request.reason))
