"""`cumem <command> --json` on the host backend, read by Python's json module:
each command prints exactly one document on stdout (also when it fails),
strings are escaped (an error detail carrying quotes, control characters
and invalid UTF-8 round-trips), sizes with units reach the workload, and
progress appears on a terminal only.

usage: cli_json.py CUMEM_BINARY VERSION
"""
import json
import os
import pty
import subprocess
import sys

CUMEM, VERSION = sys.argv[1], sys.argv[2]
MiB = 1 << 20
ENV = dict(os.environ)
for k in list(ENV):
    if k.startswith("CUMEM_"):
        del ENV[k]
ENV.update(CUMEM_BACKEND="host", CUMEM_HOST_GRANULARITY_KB="64")

passed = failed = 0


def run(args, env=None, code=0):
    """Run cumem with args; the exit code must be `code`; returns (doc, stderr)."""
    p = subprocess.run([CUMEM] + args, capture_output=True, env={**ENV, **(env or {})}, timeout=300)
    if p.returncode != code:
        raise AssertionError(f"exit {p.returncode}, expected {code}; stderr: {p.stderr[-600:]!r}")
    text = p.stdout.decode("utf-8")  # strict: the document must be valid UTF-8
    return json.loads(text), p.stderr  # the whole stdout is one document


def common(doc, command, ok):
    assert doc["command"] == command, doc["command"]
    assert doc["cumem_version"] == VERSION, doc["cumem_version"]
    assert doc["ok"] is ok, doc["ok"]
    assert doc["exit_code"] == (0 if ok else 1), doc["exit_code"]
    assert ("error" in doc) is (not ok), doc.get("error")


def case(fn):
    global passed, failed
    try:
        fn()
        passed += 1
        print(f"[  OK  ] {fn.__name__}")
    except Exception as e:  # one failing case must not hide the others
        failed += 1
        print(f"[ FAIL ] {fn.__name__}: {type(e).__name__}: {e}")
    return fn


@case
def info_reports_each_device():
    doc, err = run(["info", "--json"], env={"CUMEM_HOST_DEVICES": "2", "CUMEM_HOST_MEMORY_MB": "512"})
    common(doc, "info", True)
    assert doc["backend"] == "host"
    assert doc["device_count"] == 2 and len(doc["devices"]) == 2
    for i, d in enumerate(doc["devices"]):
        assert d["index"] == i
        assert d["total_bytes"] == 512 * MiB and 0 < d["free_bytes"] <= d["total_bytes"]
        assert d["granularity_bytes"] == 64 * 1024
        assert d["posix_fd_handles"] is True and d["fabric_handles"] is False
    assert err == b"", err  # nothing on stderr when all went well


@case
def info_open_failure_is_still_a_document():
    doc, err = run(["info", "--json"], env={"CUMEM_COPY_CHUNK_MB": "0"}, code=1)
    common(doc, "info", False)
    e = doc["error"]
    assert e["step"] == "open" and e["name"] == "CUMEM_EINVAL" and e["code"] < 0, e
    assert 'CUMEM_COPY_CHUNK_MB="0"' in e["detail"], e
    assert b"open failed" in err  # and the text error on stderr


@case
def strings_are_escaped():
    # The backend name comes back inside the error detail: quotes, a
    # backslash, control characters and bytes that are not UTF-8.
    name = b'q"uo\\te\n\t\x01\x7f \xc3\xa9 \xff\xfe end'
    p = subprocess.run([os.fsencode(CUMEM), b"info", b"--json", b"--backend", name], capture_output=True,
                       env=ENV, timeout=60)
    assert p.returncode == 2, p.returncode  # a bad value: the line is refused, still as a document
    doc = json.loads(p.stdout.decode("utf-8"))
    want = 'q"uo\\te\n\t\x01\x7f \u00e9 \ufffd\ufffd end'
    assert f'unknown backend "{want}"' in doc["error"]["detail"], doc["error"]["detail"]


@case
def demo_sizes_with_units_reach_the_workload():
    for size, want in (("8M", 8 * MiB), ("0.0078125", 8 * MiB), ("1.5M", 3 * MiB // 2), ("6291456B", 6 * MiB)):
        doc, err = run(["demo", "--json", "--size", size, "--kv", "2M"])
        common(doc, "demo", True)
        w, kv = doc["weights"], doc["kv_cache"]
        assert w["requested_bytes"] == want, (size, w)
        assert kv["requested_bytes"] == 2 * MiB, kv
        assert w["allocated_bytes"] >= want and w["tensors"] > 100, w
        assert doc["verified"] is True and doc["bytes_differ"] == 0 and doc["tensors_moved"] == 0
        assert doc["host_backup_bytes"] == w["allocated_bytes"], doc  # the weights, offloaded
        freed = doc["device_free_asleep_bytes"] - doc["device_free_awake_bytes"]
        assert doc["device_memory_freed_bytes"] == freed == w["allocated_bytes"] + kv["allocated_bytes"], doc
        assert [s["step"] for s in doc["steps"]] == ["allocate", "fill", "sleep", "wake", "verify"]
        assert all(s["seconds"] >= 0 for s in doc["steps"])
        assert err == b"", err  # piped: no progress


@case
def demo_failure_names_its_step():
    # 4 MiB of emulated device memory cannot hold 8 MiB of weights.
    doc, _ = run(["demo", "--json", "--size", "8M", "--kv", "1M"], env={"CUMEM_HOST_MEMORY_MB": "4"}, code=1)
    common(doc, "demo", False)
    assert doc["error"]["step"] == "allocate", doc["error"]
    assert doc["error"]["name"] in ("CUMEM_ENOMEM", "CUMEM_E2BIG"), doc["error"]
    assert doc["verified"] is False
    assert [s["step"] for s in doc["steps"]] == []


@case
def bench_reports_every_step():
    doc, err = run(["bench", "--json", "--size", "16M", "--kv", "8M", "--rounds", "2"])
    common(doc, "bench", True)
    assert doc["backend"] == "host" and doc["rounds"] == 2
    assert doc["weights_bytes"] >= 16 * MiB and doc["kv_bytes"] >= 8 * MiB, doc
    assert doc["link_bytes"] == 256 * MiB and doc["link_d2h_gbps"] > 0 and doc["link_h2d_gbps"] > 0
    steps = [s["step"] for s in doc["steps"]]
    assert steps[0].startswith("cold sleep") and len(steps) == 14, steps
    assert "first sleep, prepare-ahead mode (no call)" in steps, steps
    assert "skip: sleep, every chunk changed (median)" in steps, steps
    skip = doc["skip"]
    assert skip["copy_chunks"] >= 1 and skip["unchanged_seconds"] > 0 and skip["every_chunk_over_plain"] > 0, skip
    assert doc["fingerprint_gbps"] > 0, doc
    assert doc["give_back_seconds"] >= 0 and doc["prepare_ahead_ready_seconds"] >= 0, doc
    for s in doc["steps"]:
        assert s["seconds"] >= 0, s
        if "bytes" in s:
            assert s["bytes"] == doc["weights_bytes"] and s["gbps"] > 0, s
    assert doc["verified"] is True
    assert err == b"", err


@case
def progress_only_on_a_terminal():
    # stderr on a pseudo-terminal: progress lines appear (and are erased).
    master, slave = pty.openpty()
    p = subprocess.Popen([CUMEM, "demo", "--json", "--size", "8M", "--kv", "2M"], stdout=subprocess.PIPE,
                         stderr=slave, env=ENV)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # EIO: the terminal's other side closed
            break
        if not chunk:
            break
        seen += chunk
    out, _ = p.communicate(timeout=300)
    os.close(master)
    assert p.returncode == 0, p.returncode
    assert b"[cumem] allocating" in seen and b"[cumem] verifying" in seen, seen
    assert seen.endswith(b"\r\x1b[K"), seen[-40:]  # the last progress line erased
    json.loads(out.decode("utf-8"))  # stdout stays one clean document
    # --quiet: none, even on a terminal.
    master, slave = pty.openpty()
    p = subprocess.run([CUMEM, "demo", "--json", "--quiet", "--size", "8M", "--kv", "2M"], stdout=subprocess.PIPE,
                       stderr=slave, env=ENV, timeout=300)
    os.close(slave)
    os.set_blocking(master, False)
    try:
        quiet = os.read(master, 4096)
    except (BlockingIOError, OSError):
        quiet = b""
    os.close(master)
    assert p.returncode == 0 and quiet == b"", quiet


@case
def a_refused_command_line_is_still_a_document():
    # --json after the refused option counts too; the exit code is 2.
    for args, says in ((["demo", "--size", "nan", "--json"], "--size nan"),
                       (["info", "--json", "--bogus"], "unknown option --bogus"),
                       (["bench", "--json", "stray"], "unexpected argument stray"),
                       (["info", "--json", "--backend", "tape"], "unknown backend")):
        doc, _ = run(args, code=2)
        assert doc["command"] == args[0] and doc["ok"] is False and doc["exit_code"] == 2, doc
        assert doc["error"]["step"] == "arguments" and says in doc["error"]["detail"], doc["error"]


@case
def backend_option_replaces_a_malformed_environment():
    doc, _ = run(["info", "--json", "--backend", "host"], env={"CUMEM_BACKEND": "bogus"})
    common(doc, "info", True)
    doc, _ = run(["info", "--json"], env={"CUMEM_BACKEND": "bogus"}, code=1)  # refused without it
    common(doc, "info", False)
    assert "CUMEM_BACKEND" in doc["error"]["detail"], doc["error"]


@case
def output_that_cannot_be_written_is_a_failure():
    # a document lost to a full disk must not exit 0
    for args in (["info", "--json"], ["--version"]):
        with open("/dev/full", "wb") as full:
            p = subprocess.run([CUMEM] + args, stdout=full, stderr=subprocess.PIPE, env=ENV, timeout=60)
        assert p.returncode == 1 and b"cannot write the output" in p.stderr, (args, p.returncode, p.stderr)


@case
def bench_variables_are_checked_before_it_runs():
    for name, value in (("CUMEM_BENCH_PRETOUCH_GIB", "2x"), ("CUMEM_BENCH_PRETOUCH_GIB", "nan"),
                        ("CUMEM_BENCH_BARRIER", "/tmp:abc"), ("CUMEM_BENCH_BARRIER", "nodir"),
                        ("CUMEM_BENCH_BARRIER", "/tmp:0")):
        p = subprocess.run([CUMEM, "bench", "--size", "4M", "--kv", "4M", "--rounds", "1"], capture_output=True,
                           env={**ENV, name: value}, timeout=60)
        assert p.returncode == 2 and f"{name}={value}".encode() in p.stderr, (name, value, p.returncode, p.stderr)


print(f"{passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
