"""`python -m bench frozen_load`: what each rank of a frozen role holds after loading.

Starts `quartet serve reference` as N local ranks (gloo on CPU) on a random ~100M-parameter
Llama, whole (`--zero-stage 0`) and sharded (`--zero-stage 3`, loaded partitioned through
`deepspeed.zero.Init`), in each dtype asked, and reports every rank's peak resident memory
(`VmHWM`) once the service is SERVING — before any forward, so fp32 weights loaded whole
may still be file-mapped pages not yet read — next to the model's size in that dtype. The
reward role holds its model the same way (`quartet.engines.frozen_model.FrozenHost`).

    python -m bench frozen_load [--ranks 2] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from quartet.launch.memory import DTYPE_BYTES, model_shape

MIB = 1 << 20
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8,
         "num_attention_heads": 16, "num_key_value_heads": 16}


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/{pid}/status: no VmHWM")


def measure(model: Path, ranks: int, stage: int, dtype: str, workdir: Path) -> list[int]:
    from quartet.launch.local import LocalCluster
    from quartet.launch.ranks import start_role_ranks

    with LocalCluster(workdir / f"z{stage}-{dtype}", env={"OMP_NUM_THREADS": "1"}) as cluster:
        procs = start_role_ranks(cluster, "reference", ["--model", str(model), "--dtype", dtype,
                                                        "--zero-stage", str(stage)], ranks)
        cluster.wait_healthy(600)
        return [peak_rss(p.process.pid) for p in procs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench frozen_load")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args(argv)
    from quartet.testing import tiny_model_dir

    model = tiny_model_dir(name="bench-llama-100m", **SHAPE)
    params = model_shape(model).params
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-frozen-") as tmp:
        for dtype in args.dtypes:
            for stage in (0, 3):
                peaks = measure(model, args.ranks, stage, dtype, Path(tmp))
                rows.append({"dtype": dtype, "zero_stage": stage, "ranks": args.ranks,
                             "model_mib": round(params * DTYPE_BYTES[dtype] / MIB),
                             "peak_rss_mib_per_rank": [round(p / MIB) for p in peaks]})
                print(json.dumps(rows[-1]), flush=True)
    print(f"\nmodel: {params / 1e6:.0f}M parameters; peak RSS per rank once SERVING")
    print("| dtype | ZeRO | ranks | model (MiB) | peak RSS per rank (MiB) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['dtype']} | {r['zero_stage']} | {r['ranks']} | {r['model_mib']} | "
              f"{', '.join(map(str, r['peak_rss_mib_per_rank']))} |")
    return 0
