"""A stand-alone actor rank 0 for the weight-session failure tests.

Usage: python model_sender_main.py PORT MODEL_DIR MODE VERSION
MODE: ok (send the model's weights, perturbed by VERSION), stall (join, then never send),
crash (send the first buckets, then hang mid-session, to be SIGKILLed), baddigest (send a
manifest with one tensor renamed, then a good session as VERSION + 1).
Prints one line per event so the test can follow it.
"""

from __future__ import annotations

import sys
import time

import torch
from transformers import AutoModelForCausalLM

from quartet.weightsync import WeightGroupConfig, WeightSender, init_weight_group, specs_of


def weights(model_dir: str, version: int) -> dict[str, torch.Tensor]:
    state = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    g = torch.Generator().manual_seed(version)
    return {k: v + 0.3 * torch.randn(v.shape, generator=g) for k, v in state.items()}


def main() -> None:
    port, model_dir, mode, version = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    tensors = weights(model_dir, version)
    group = init_weight_group(WeightGroupConfig("127.0.0.1", port, 2, 0, timeout_s=60))
    print("joined", flush=True)
    sender = WeightSender(group, bucket_bytes=16 << 10)
    if mode == "ok":
        sender.send(version, tensors)
    elif mode == "stall":
        time.sleep(600)
    elif mode == "crash":
        items = list(tensors.items())

        def hang_half_way():
            for i, item in enumerate(items):
                if i == len(items) // 2:
                    print("half way", flush=True)
                    time.sleep(600)
                yield item

        sender.send(version, hang_half_way(), specs_of(items))
    elif mode == "baddigest":
        name, t = next(iter(tensors.items()))
        renamed = {("renamed." + name if k == name else k): v for k, v in tensors.items()}
        sender.send(version, renamed)
        print("sent bad", flush=True)
        sender.send(version + 1, weights(model_dir, version + 1))
    print("sent", flush=True)
    time.sleep(5)  # receivers finish reading before the group goes away
    group.close()


if __name__ == "__main__":
    main()
