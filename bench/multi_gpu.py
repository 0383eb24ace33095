#!/usr/bin/env python3
"""Several GPUs at once: one `cumem bench` process per GPU, all at the same
time, lined up before each timed phase, against one process alone on the
same machine -- and the knobs that may explain the difference.

    bench/multi_gpu.py [--cumem build/cumem] [--gpus N] [--sweep NAMES]
                        [--pinprobe] [-- bench options, e.g. --size 16 --kv 2]

For each configuration it runs the bench alone (GPU 0, the others idle) and
then on every GPU together, and prints every process's row plus the
aggregate. The figure that matters is "cold, % of alone": each process's
cold sleep (nothing pinned yet) against the one process alone (issue 9:
>= 80%). "ahead" is the first sleep after the backup was pinned in the
background (prepare-ahead mode), "pin" pinning 16 GiB ahead with a call
(touch + register, no copy), "warm"/"wake" the steady state.

Configurations (--sweep, comma-separated; default: all of them):
  base        the defaults
  threads2/4/16  CUMEM_HOST_THREADS (first-touch threads per process) vs the
              machine's cores
  seg256      256 MiB copy segments (fewer, larger registrations)
  reglock     CUMEM_REGISTER_LOCK: the processes page-lock one at a time
  pretouch    CUMEM_BENCH_PRETOUCH_GIB: the backups meet host memory the VM
              has already grown (first touch of fresh guest memory is slow)
  numa0/numa1 CUMEM_NUMA off / forced (where the machine has one node, both
              equal the default and are skipped)
--pinprobe adds bench/pinprobe experiment 3 (touch and register timed
apart) on every GPU at once, to see which of the two slows down together.

Only the standard library; each bench's JSON is read from its stdout. With
`-- --backend host` it runs on the host backend (N processes standing for N
GPUs) so the script itself can be tried anywhere.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROWS = {  # short name: the bench's step name
    "cold": "cold sleep (weights offloaded, cache discarded)",
    "warm": "warm sleep (median)",
    "wake": "wake (median)",
    "ahead": "first sleep, prepare-ahead mode (no call)",
    "pin": "prepare backup ahead (pin only, no copy)",
    "wake0": "wake, retention off (given back after)",
}

SWEEP = {
    "base": {},
    "threads2": {"CUMEM_HOST_THREADS": "2"},
    "threads4": {"CUMEM_HOST_THREADS": "4"},
    "threads16": {"CUMEM_HOST_THREADS": "16"},
    "seg256": {"CUMEM_COPY_CHUNK_MB": "256"},
    "reglock": {"CUMEM_REGISTER_LOCK": "{tmp}/register.lock"},
    "pretouch": {"CUMEM_BENCH_PRETOUCH_GIB": "{pretouch}"},
    "numa0": {"CUMEM_NUMA": "0"},
    "numa1": {"CUMEM_NUMA": "1"},
}


def visible_gpus():
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d for d in env.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def numa_nodes():
    try:
        with open("/sys/devices/system/node/online") as f:
            text = f.read().strip()
    except OSError:
        return 1
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += int(hi or lo) - int(lo) + 1
    return n


def run_together(cumem, gpus, extra_env, bench_args, tmp):
    """One bench per GPU, at once; returns [(gpu, result dict or None, log)]."""
    barrier = tempfile.mkdtemp(dir=tmp, prefix="barrier-")
    procs = []
    for gpu in gpus:
        env = dict(os.environ, **extra_env)
        env["CUDA_VISIBLE_DEVICES"] = gpu
        env["CUMEM_BENCH_BARRIER"] = f"{barrier}:{len(gpus)}"
        log = open(os.path.join(tmp, f"bench-{gpu}-{time.monotonic_ns()}.log"), "w+")
        p = subprocess.Popen([cumem, "bench", "--json", *bench_args], env=env, stdout=subprocess.PIPE,
                             stderr=log, text=True)
        procs.append((gpu, p, log))
    results = []
    for gpu, p, log in procs:
        out, _ = p.communicate()
        log.seek(0)
        text = log.read()
        log.close()
        try:
            results.append((gpu, json.loads(out), text))
        except ValueError:
            results.append((gpu, None, text + out))
    shutil.rmtree(barrier, ignore_errors=True)
    return results


def row_of(result, name):
    for step in result["steps"]:
        if step["step"] == ROWS[name]:
            return step
    return None


def print_runs(label, runs, alone_cold):
    print(f"  {label}")
    print("    | GPU | cold GB/s | cold % of alone | ahead GB/s | pin GB/s | warm GB/s | wake GB/s "
          "| wake (ret. off) GB/s | given back ms | link d2h GB/s |")
    print("    |---|---|---|---|---|---|---|---|---|---|")
    for gpu, r, log in runs:
        if r is None:
            print(f"    | {gpu} | FAILED: {log.strip().splitlines()[-1] if log.strip() else '?'} |")
            continue
        g = {k: (row_of(r, k) or {}).get("gbps", float("nan")) for k in ROWS}
        pct = 100 * g["cold"] / alone_cold if alone_cold else float("nan")
        print(f"    | {gpu} | {g['cold']:.1f} | {pct:.0f}% | {g['ahead']:.1f} | {g['pin']:.1f} | {g['warm']:.1f} "
              f"| {g['wake']:.1f} | {g['wake0']:.1f} | {1e3 * r.get('give_back_seconds', float('nan')):.0f} "
              f"| {r['link_d2h_gbps']:.1f} |")
    ok = [r for _, r, _ in runs if r is not None]
    if len(ok) > 1:
        agg = {}
        for k in ("cold", "ahead", "pin"):
            steps = [row_of(r, k) for r in ok]
            total = sum(r["weights_bytes"] for r in ok)
            slowest = max(s["seconds"] for s in steps if s)
            agg[k] = total / slowest / 1e9
        print(f"    | all {len(ok)} | {agg['cold']:.1f} (aggregate: all bytes / slowest) | | "
              f"{agg['ahead']:.1f} | {agg['pin']:.1f} | | | | | |")


def run_pinprobe(pinprobe, gpus, size, tmp):
    print(f"\n== pinprobe {size} experiment 3 (touch, then one register, timed apart), on every GPU at once")
    procs = []
    for gpu in gpus:
        env = dict(os.environ, CUDA_VISIBLE_DEVICES=gpu)
        procs.append((gpu, subprocess.Popen([pinprobe, size, "0", "3"], env=env, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)))
    for gpu, p in procs:
        out, _ = p.communicate()
        print(f"  -- GPU {gpu}")
        for line in out.splitlines():
            if any(w in line for w in ("touch", "register", "GB/s")):
                print("    " + line.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cumem", default=os.path.join(os.path.dirname(__file__), "..", "build", "cumem"))
    ap.add_argument("--gpus", type=int, default=0, help="processes (default: one per visible GPU)")
    ap.add_argument("--sweep", default=",".join(SWEEP), help="configurations to run (see above)")
    ap.add_argument("--pinprobe", action="store_true", help="also run pinprobe experiment 3 on all GPUs at once")
    ap.add_argument("bench_args", nargs="*", help="options for cumem bench (after --)")
    args = ap.parse_args()
    bench_args = args.bench_args or ["--size", "16", "--kv", "2", "--rounds", "1"]
    host = "host" in bench_args
    gpus = visible_gpus()
    if args.gpus:
        gpus = (gpus if len(gpus) >= args.gpus and not host else [str(i) for i in range(args.gpus)])[: args.gpus]
    if not gpus:
        gpus = ["0"]
    size = next((float(bench_args[i + 1]) for i, a in enumerate(bench_args[:-1]) if a == "--size"), 16.0)
    nodes = numa_nodes()
    print(f"concurrent bench: {len(gpus)} process(es) on GPUs {','.join(gpus)}; {os.cpu_count()} cores; "
          f"{nodes} NUMA node(s); bench {' '.join(bench_args)}")
    tmp = tempfile.mkdtemp(prefix="cumem-concurrent-")
    summary = []
    try:
        for name in args.sweep.split(","):
            name = name.strip()
            if name not in SWEEP:
                sys.exit(f"unknown configuration {name!r} (known: {', '.join(SWEEP)})")
            if name.startswith("numa") and nodes < 2:
                print(f"\n== {name}: skipped (one NUMA node: CUMEM_NUMA changes nothing)")
                continue
            env = {k: v.format(tmp=tmp, pretouch=f"{size + 4:g}") for k, v in SWEEP[name].items()}
            print(f"\n== {name}: {' '.join(f'{k}={v}' for k, v in env.items()) or 'defaults'}")
            alone = run_together(args.cumem, gpus[:1], env, bench_args, tmp)
            r0 = alone[0][1]
            alone_cold = row_of(r0, "cold")["gbps"] if r0 else 0
            print_runs("alone (GPU %s; the others idle)" % gpus[0], alone, alone_cold)
            if len(gpus) > 1:
                together = run_together(args.cumem, gpus, env, bench_args, tmp)
                print_runs(f"together ({len(gpus)} processes)", together, alone_cold)
                colds = [row_of(r, "cold")["gbps"] for _, r, _ in together if r]
                worst = min(colds) if colds else 0
                summary.append((name, alone_cold, worst, 100 * worst / alone_cold if alone_cold else 0))
        if args.pinprobe and not host:
            pinprobe = os.path.join(os.path.dirname(args.cumem), "pinprobe")
            run_pinprobe(pinprobe, gpus, f"{size:g}G", tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if summary:
        print("\n== summary: cold sleep per process, together vs alone (target: >= 80%)")
        print("| configuration | alone GB/s | slowest together GB/s | % of alone |")
        print("|---|---|---|---|")
        for name, a, w, pct in summary:
            print(f"| {name} | {a:.1f} | {w:.1f} | {pct:.0f}% |")


if __name__ == "__main__":
    main()
