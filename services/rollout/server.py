"""`quartet serve rollout`: flags, engine construction and servicer registration."""

from __future__ import annotations

import argparse
import gc
import logging

from quartet.heap import release_free_heap
from quartet.serving import RoleServer
from quartet.v1 import rollout_pb2_grpc

log = logging.getLogger("quartet.rollout")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("rollout")
    g.add_argument("--model", required=True, help="Hugging Face model directory (or hub id)")
    g.add_argument("--backend", choices=("auto", "vllm", "hf"), default="auto",
                   help="generation engine; auto = vLLM when importable, else HF generate")
    g.add_argument("--dtype", default="auto", help="auto, float32, float16 or bfloat16")
    g.add_argument("--max-model-len", type=int, default=None,
                   help="context length (prompt + response); default: the model's")
    g.add_argument("--strict-context", action="store_true",
                   help="reject a request whose prompt + max_new_tokens exceeds "
                        "--max-model-len instead of generating fewer tokens (quartet ppo sets "
                        "it when it sizes the context from the run's prompts)")
    g.add_argument("--seed", type=int, default=0, help="engine seed")
    g.add_argument("--initial-version", type=int, default=0,
                   help="weight version of the weights loaded from --model")
    g.add_argument("--kv-cache-bytes", type=int, default=None,
                   help="vLLM KV cache size in bytes (default on CPU: 1 GiB)")
    g.add_argument("--gpu-memory-utilization", type=float, default=None,
                   help="vLLM: fraction of GPU memory to use")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="vLLM TP size")
    g.add_argument("--engine-process", choices=("auto", "on", "off"), default="auto",
                   help="vLLM engine core in a separate process (auto: on GPU yes, on CPU no)")
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=None,
                   help="vLLM: run eagerly, no torch.compile (starts faster; default: vLLM's)")
    g.add_argument("--sleep-when-idle", action="store_true",
                   help="vLLM on GPU: sleep (free GPU memory) between generations, wake for "
                        "the next one or a weight update (colocated with trainers); a no-op "
                        "on CPU and with the HF backend")
    g.add_argument("--enable-sleep", action="store_true",
                   help="accept ReleaseMemory: free the weights and KV cache after a generate "
                        "phase until the next weight update (vLLM backend; on GPU vLLM's "
                        "sleep level 2, on CPU in the worker)")
    g.add_argument("--max-batch-rows", type=int, default=256,
                   help="HF backend: most rows (prompts x n) per generate call")


def build_engine(args: argparse.Namespace):
    from quartet.engines.generation import RolloutEngine, build_generator
    from quartet.engines.generation.rollout_engine import release_refusal

    if args.strict_context and args.max_model_len is None:
        raise ValueError("--strict-context: needs --max-model-len (the context to enforce)")
    if args.enable_sleep and args.backend == "hf":  # before loading; auto is checked after
        raise ValueError(release_refusal("hf"))
    generator = build_generator(
        args.backend,
        args.model,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
        seed=args.seed,
        kv_cache_bytes=args.kv_cache_bytes,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        multiprocess={"auto": None, "on": True, "off": False}[args.engine_process],
        max_batch_rows=args.max_batch_rows,
        enforce_eager=args.enforce_eager,
        sleep_mode=args.sleep_when_idle or args.enable_sleep,
    )
    generator.strict_context = args.strict_context
    log.info("rollout engine ready: backend=%s model=%s max_model_len=%d vocab=%d",
             generator.backend, generator.model_name, generator.max_model_len,
             generator.vocab_size)
    return RolloutEngine(generator, initial_version=args.initial_version,
                         sleep_when_idle=args.sleep_when_idle,
                         enable_release=args.enable_sleep)


def serve(args: argparse.Namespace, server: RoleServer) -> None:
    from services.rollout.servicer import RolloutServicer

    engine = build_engine(args)
    # The engine's long-lived objects never become garbage: keep them out of every
    # collection (faster GC pauses while serving, and a prompt exit).
    gc.collect()
    gc.freeze()
    release_free_heap()  # what loading the weights and vLLM's warm-up freed
    rollout_pb2_grpc.add_RolloutServicer_to_server(RolloutServicer(engine), server.grpc_server)
    # Once drained, end the engine: an in-process vLLM engine core made a torch.distributed
    # group over a file store (/tmp/vllm_dist_<uuid>), and only destroying that group removes
    # the file; without this every stopped replica left one behind.
    server.on_stop(engine.generator.close)
    server.set_serving(True)
