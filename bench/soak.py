#!/usr/bin/env python3
"""Soak test: many sleep/wake cycles of a model-shaped PyTorch workload.

Weights shaped like a small transformer (bf16 matrices per layer) live in a
cumem pool tagged "weights", a KV cache in one tagged "kv_cache". Each cycle
runs a little forward pass over every weight and writes the KV cache, then
sleeps (weights offloaded to host memory, KV cache discarded) and wakes up.

Measured every cycle, printed every --report-every cycles:
  - GPU memory in use while asleep (torch.cuda.mem_get_info: total - free),
  - host RSS after wake (/proc/self/status VmRSS),
  - live backend objects after wake (cumem backend counters: reservations,
    handles, mappings, host registrations, streams, events),
  - sleep and wake times,
  - the weights: per-chunk checksums every cycle, and torch.equal against a
    CPU copy every --full-every cycles and at the end (bit-exact).

Passes (exit 0) when, from cycle --settle (10) to the end, GPU memory while
asleep and RSS after wake stay within --gpu-tol-mib / --rss-tol-mib of their
value at cycle --settle, the backend counters after wake are identical every
cycle, and the weights are bit-exact every time. Otherwise prints what
drifted and exits 1.

    PYTHONPATH=build/pylib python3 bench/soak.py --cycles 1000
    python3 bench/soak.py --api native      # cumem.pool/sleep/wake instead

Run it alone on the GPU: other processes' allocations show in mem_get_info.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")

MiB = 1 << 20
GiB = 1 << 30


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def gpu_used_bytes(torch):
    torch.cuda.synchronize()
    free, total = torch.cuda.mem_get_info()
    return total - free


def build_weights(torch, gib, hidden, device):
    """Per layer: qkv, o, gate+up, down (bf16), like a Llama block; as many
    layers as fit in `gib`."""
    ffn = hidden * 8 // 3 // 256 * 256
    per_layer = (3 * hidden * hidden + hidden * hidden + 2 * ffn * hidden + hidden * ffn) * 2
    layers = max(1, int(gib * GiB) // per_layer)
    g = torch.Generator(device=device)
    g.manual_seed(1234)
    weights = []
    for _ in range(layers):
        for shape in ((3 * hidden, hidden), (hidden, hidden), (2 * ffn, hidden), (hidden, ffn)):
            w = torch.empty(shape, dtype=torch.bfloat16, device=device)
            w.normal_(0, 0.02, generator=g)
            weights.append(w)
    return weights, layers, ffn


def checksums(torch, tensors, chunks=64):
    """Per tensor, the int64 sums of `chunks` slices of its raw bits: cheap on
    the GPU, and a restore in the wrong place or order changes them."""
    out = []
    for t in tensors:
        bits = t.view(-1).view(torch.int16)
        n = bits.numel() // chunks * chunks
        head = bits[:n].view(chunks, -1).sum(dim=1, dtype=torch.int64)
        tail = bits[n:].sum(dtype=torch.int64).view(1)
        out.append(torch.cat([head, tail]))
    return torch.stack(out).cpu()


def forward(torch, weights, kv, hidden, ffn, step):
    """Touch every weight (a tiny batch through each block) and write the KV
    cache, so the memory is used between sleeps as a server would."""
    x = torch.full((8, hidden), 0.01, dtype=torch.bfloat16, device=weights[0].device)
    for i in range(0, len(weights), 4):
        qkv, o, up, down = weights[i : i + 4]
        h = x @ qkv.t()
        x = h[:, :hidden] @ o.t()
        u = x @ up.t()
        x = (u[:, :ffn] * torch.sigmoid(u[:, ffn:])) @ down.t()
        x = x / (x.norm() + 1)
    kv.fill_(step % 251)
    kv.view(-1)[: x.numel()].copy_(x.view(-1).to(kv.dtype))
    torch.cuda.synchronize()
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--weights-gib", type=float, default=2.0)
    ap.add_argument("--kv-gib", type=float, default=4.0)
    ap.add_argument("--hidden", type=int, default=4096)
    ap.add_argument("--api", choices=("vllm", "native"), default="vllm",
                    help="cumem.CuMemAllocator (vLLM's API) or cumem.pool/sleep/wake")
    ap.add_argument("--report-every", type=int, default=50)
    ap.add_argument("--full-every", type=int, default=100, help="torch.equal against the CPU copy every N cycles")
    ap.add_argument("--settle", type=int, default=10, help="cycles before the figures must stay flat")
    ap.add_argument("--gpu-tol-mib", type=float, default=64)
    ap.add_argument("--rss-tol-mib", type=float, default=256)
    ap.add_argument("--json", help="write per-cycle figures to this file")
    args = ap.parse_args()

    import torch

    import cumem

    if not torch.cuda.is_available():
        print("soak: needs a CUDA GPU")
        return 77
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    inst = cumem.default()
    print(f"soak: cumem {cumem.__version__} on backend {inst.backend}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(0)}; api {args.api}, {args.cycles} cycles")

    if args.api == "vllm":
        allocator = cumem.CuMemAllocator.get_instance()
        pool = allocator.use_memory_pool
        sleep = lambda: allocator.sleep(offload_tags=("weights",))  # noqa: E731

        def wake(cycle):
            # vLLM wakes weights first, then the cache; alternate with "all".
            if cycle % 2:
                allocator.wake_up(["weights"])
                allocator.wake_up(["kv_cache"])
            else:
                allocator.wake_up()
    else:
        pool = cumem.pool
        sleep = lambda: cumem.sleep(offload_tags="weights")  # noqa: E731
        wake = lambda cycle: cumem.wake()  # noqa: E731

    with pool("weights"):
        weights, layers, ffn = build_weights(torch, args.weights_gib, args.hidden, device)
    with pool("kv_cache"):
        kv = torch.empty(int(args.kv_gib * GiB) // 2, dtype=torch.bfloat16, device=device)
    torch.cuda.synchronize()
    wbytes = sum(w.numel() * w.element_size() for w in weights)
    print(f"soak: {layers} layers, {len(weights)} weight tensors, {wbytes / GiB:.2f} GiB weights, "
          f"{kv.numel() * 2 / GiB:.2f} GiB KV cache")
    reference_cpu = [w.cpu() for w in weights]
    reference_sums = checksums(torch, weights)
    ptrs = [w.data_ptr() for w in weights] + [kv.data_ptr()]

    rows, failures = [], []
    t_start = time.time()
    for cycle in range(args.cycles):
        forward(torch, weights, kv, args.hidden, ffn, cycle)
        used_awake = gpu_used_bytes(torch)

        t0 = time.perf_counter()
        sleep()
        torch.cuda.synchronize()
        t_sleep = time.perf_counter() - t0
        used_asleep = gpu_used_bytes(torch)
        stats_asleep = cumem.stats()

        t0 = time.perf_counter()
        wake(cycle)
        torch.cuda.synchronize()
        t_wake = time.perf_counter() - t0
        rss = rss_bytes()
        counters = inst.backend_counters()

        if [w.data_ptr() for w in weights] + [kv.data_ptr()] != ptrs:
            failures.append(f"cycle {cycle}: a tensor moved")
        if not torch.equal(checksums(torch, weights), reference_sums):
            failures.append(f"cycle {cycle}: weight checksums differ after wake")
        full = cycle % args.full_every == 0 or cycle == args.cycles - 1
        if full and not all(torch.equal(w.cpu(), r) for w, r in zip(weights, reference_cpu)):
            failures.append(f"cycle {cycle}: weights are not bit-exact after wake")
        freed = used_awake - used_asleep
        if cycle == args.settle and freed < 0.9 * (wbytes + kv.numel() * 2):
            failures.append(f"cycle {cycle}: sleep freed only {freed / GiB:.2f} GiB of the GPU")

        row = dict(cycle=cycle, sleep_s=t_sleep, wake_s=t_wake, gpu_used_awake=used_awake,
                   gpu_used_asleep=used_asleep, rss=rss, counters=counters,
                   bytes_asleep=stats_asleep["bytes_asleep"], full_check=full)
        rows.append(row)
        if cycle == args.settle:
            rate = (time.time() - t_start) / (cycle + 1)
            print(f"soak: {rate:.2f} s per cycle, about {rate * args.cycles / 60:.1f} min in all")
        if cycle % args.report_every == 0 or cycle == args.cycles - 1 or failures:
            print(f"cycle {cycle:5d}: sleep {t_sleep * 1e3:7.1f} ms  wake {t_wake * 1e3:7.1f} ms  "
                  f"GPU used asleep {used_asleep / MiB:9.1f} MiB (awake {used_awake / MiB:9.1f})  "
                  f"RSS {rss / MiB:9.1f} MiB  handles {counters['handles']} mappings {counters['mappings']} "
                  f"reservations {counters['reservations']} host_regs {counters['host_registrations']} "
                  f"streams {counters['streams']} events {counters['events']}"
                  f"{'  bit-exact' if full and not failures else ''}", flush=True)
        if failures:
            break

    # Flat from the settle cycle on.
    if not failures and len(rows) > args.settle:
        base = rows[args.settle]
        for r in rows[args.settle:]:
            if r["gpu_used_asleep"] - base["gpu_used_asleep"] > args.gpu_tol_mib * MiB:
                failures.append(f"cycle {r['cycle']}: GPU memory while asleep grew by "
                                f"{(r['gpu_used_asleep'] - base['gpu_used_asleep']) / MiB:.1f} MiB since cycle {args.settle}")
                break
        for r in rows[args.settle:]:
            if r["rss"] - base["rss"] > args.rss_tol_mib * MiB:
                failures.append(f"cycle {r['cycle']}: RSS after wake grew by "
                                f"{(r['rss'] - base['rss']) / MiB:.1f} MiB since cycle {args.settle}")
                break
        for r in rows[args.settle:]:
            if r["counters"] != base["counters"]:
                failures.append(f"cycle {r['cycle']}: backend counters {r['counters']} differ from cycle "
                                f"{args.settle}'s {base['counters']}")
                break
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f)

    sleeps = sorted(r["sleep_s"] for r in rows)
    wakes = sorted(r["wake_s"] for r in rows)
    if rows:
        mid = len(rows) // 2
        print(f"soak: {len(rows)} cycles in {time.time() - t_start:.0f} s; sleep median {sleeps[mid] * 1e3:.1f} ms "
              f"(max {sleeps[-1] * 1e3:.1f}), wake median {wakes[mid] * 1e3:.1f} ms (max {wakes[-1] * 1e3:.1f}); "
              f"first sleep {rows[0]['sleep_s'] * 1e3:.1f} ms")
        last = rows[-1]
        print(f"soak: GPU used asleep {rows[min(args.settle, len(rows) - 1)]['gpu_used_asleep'] / MiB:.1f} -> "
              f"{last['gpu_used_asleep'] / MiB:.1f} MiB, RSS {rows[min(args.settle, len(rows) - 1)]['rss'] / MiB:.1f} "
              f"-> {last['rss'] / MiB:.1f} MiB, counters {last['counters']}")
    for f in failures:
        print("soak: FAIL", f)
    if not failures:
        print(f"soak: PASS ({len(rows)} cycles, flat from cycle {args.settle}, weights bit-exact)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
