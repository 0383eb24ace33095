#!/usr/bin/env python3
"""Probe: is a wake slower right after a sleep that skipped its copies, and
does it recover with a pause between the sleep and the wake?

On an H200 (bench/RESULTS.md, 2026-11-30) a wake of 16 GiB took ~0.39 s
right after a sleep that skipped unchanged weights (45 ms) against ~0.30 s
after a sleep that copied them (0.32 s). One explanation: the driver still
finishing the release of the memory the short sleep gave back (48 GiB)
while the wake's copies run. This measures the wake after each kind of
sleep, with and without a pause in between.

    PYTHONPATH=build/pylib python3 bench/wake_after_skip.py [--weights-gib 16] [--kv-gib 32]
"""
import argparse
import time

import torch

import cumem

MiB = 1 << 20


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--weights-gib", type=float, default=16)
    ap.add_argument("--kv-gib", type=float, default=32)
    args = ap.parse_args()
    with cumem.pool("w"):
        w = [torch.randn(16 * MiB, device="cuda") for _ in range(int(args.weights_gib * 16))]  # 64 MiB each
    with cumem.pool("kv"):
        kv = [torch.empty(1 << 30, dtype=torch.uint8, device="cuda") for _ in range(int(args.kv_gib))]
    sums = [t.sum().item() for t in w[:4]]
    inst = cumem.default()
    nbytes = sum(t.nbytes for t in w)
    print(f"weights {nbytes / 2**30:.1f} GiB in {len(w)} tensors, KV {len(kv)} GiB")
    print("| sleep kind | sleep s | pause s | wake s | wake GB/s |")
    print("|---|---|---|---|---|")
    runs = [("copy", False, 0), ("copy", False, 0), ("record", True, 0), ("skip", True, 0), ("skip", True, 0),
            ("skip", True, 0.5), ("skip", True, 0.5), ("copy", False, 0.5)]
    for name, skip, pause in runs:
        inst.set_tag_options("w", skip_unchanged=skip)
        s = timed(lambda: cumem.sleep(offload_tags="w"))
        time.sleep(pause)
        k = timed(cumem.wake)
        print(f"| {name} | {s:.4f} | {pause} | {k:.4f} | {nbytes / k / 1e9:.1f} |", flush=True)
    assert [t.sum().item() for t in w[:4]] == sums, "weights changed"
    print("verified: the weights' sums are unchanged")


if __name__ == "__main__":
    main()
