"""`quartet serve reference`: a frozen copy of the initial policy, the KL anchor.

Runs one rank, or N ranks behind rank 0's endpoint (`WORLD_SIZE`, as the actor): rows are
split over the ranks, and `--zero-stage 3` also shards the weights over them."""

from __future__ import annotations

import argparse
import tempfile

from quartet.heap import release_free_heap
from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF model directory (or GGUF's dir)")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 (default: best; with several ranks, "
                             "LOCAL_RANK's device)")
    parser.add_argument("--offload", action="store_true",
                        help="keep the model on CPU between calls (ZeRO-3: its partitions)")
    parser.add_argument("--micro-batch-size", type=int, default=8)
    parser.add_argument("--enable-sleep", action="store_true",
                        help="accept ReleaseMemory: free the weights after a score phase and "
                             "read them back (exactly) from a spill file before the next one "
                             "(one rank, whole weights in CPU memory)")
    parser.add_argument("--spill-dir", default=None,
                        help="with --enable-sleep: directory of the spill file (unlinked at "
                             "once; not a tmpfs); default: the system's temporary directory")
    parser.add_argument("--zero-stage", type=int, default=0, choices=[0, 3],
                        help="3 shards the weights over this role's ranks (ZeRO-3 inference)")


def _model(args: argparse.Namespace):
    from quartet.engines.frozen_model import FrozenCausalLM

    if args.spill_dir is not None and not args.enable_sleep:
        raise ValueError("--spill-dir: only read with --enable-sleep (where released weights "
                         "wait); add --enable-sleep or drop --spill-dir")
    spill_dir = (args.spill_dir or tempfile.gettempdir()) if args.enable_sleep else None
    return FrozenCausalLM(args.model, args.dtype, args.device, args.offload,
                          args.micro_batch_size, args.gguf_file, zero_stage=args.zero_stage,
                          spill_dir=spill_dir)


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.v1 import reference_pb2_grpc
    from services.reference.servicer import ReferenceServicer

    model = _model(args)
    release_free_heap()  # what loading the model freed
    reference_pb2_grpc.add_ReferenceServicer_to_server(ReferenceServicer(model),
                                                       server.grpc_server)
    # Loading is collective with several ranks, so every rank has joined by now.
    server.on_stop(model.stop_workers)
    server.set_serving(True)


def serve_rank(args: argparse.Namespace) -> int:
    """Ranks > 0: no gRPC port; serve rank 0's fanned-out calls."""
    return _model(args).serve_worker()
