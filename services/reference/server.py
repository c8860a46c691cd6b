"""`quartet serve reference`: a frozen copy of the initial policy, the KL anchor."""

from __future__ import annotations

import argparse

from quartet.serving import RoleServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF model directory (or GGUF's dir)")
    parser.add_argument("--gguf-file", default=None, help="GGUF file name inside --model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: best)")
    parser.add_argument("--offload", action="store_true",
                        help="keep the model on CPU between calls")
    parser.add_argument("--micro-batch-size", type=int, default=8)


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from quartet.engines.frozen_model import FrozenCausalLM
    from quartet.v1 import reference_pb2_grpc
    from services.reference.servicer import ReferenceServicer

    model = FrozenCausalLM(args.model, args.dtype, args.device, args.offload,
                           args.micro_batch_size, args.gguf_file)
    reference_pb2_grpc.add_ReferenceServicer_to_server(ReferenceServicer(model),
                                                       server.grpc_server)
    server.set_serving(True)
