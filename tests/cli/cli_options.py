"""The `cumem` command line, table-driven: every option of every command with
garbage, 0, 1, a negative number, an overflow and the largest value allowed
(and a few more), plus the command-level errors. Each row names the exit
code and a fragment of the message it must print.

A value that parses is proven accepted without running a workload: every
row runs with CUMEM_COPY_CHUNK_MB=0, which the library refuses at open, so
an accepted line gets past its options and fails there (exit 1, the
variable named) instead of being refused (exit 2). A refused line prints
nothing on stdout, or with --json one document that says exit_code 2.

usage: cli_options.py CUMEM_BINARY VERSION
"""
import json
import os
import subprocess
import sys

CUMEM, VERSION = sys.argv[1], sys.argv[2]
USAGE, FAILED, OK = 2, 1, 0
ACCEPTED = (FAILED, 'CUMEM_COPY_CHUNK_MB="0"')  # parsed, then refused at open

SIZE_CASES = [  # value, (exit, message)
    ("abc", (USAGE, "not a number")),                  # garbage
    ("0", (USAGE, "must be at least 1 byte")),         # 0
    ("1", ACCEPTED),                                   # 1 (GiB)
    ("-1", (USAGE, "not a number")),                   # negative
    ("99999999999999999999", (USAGE, "too large")),    # overflow of the number
    ("16777216T", (USAGE, "too large")),               # overflow through the unit
    ("1024T", ACCEPTED),                               # max
    ("1025T", (USAGE, "too large (at most 1024T)")),   # max + 1
    ("nan", (USAGE, "not a number")),
    ("inf", (USAGE, "not a number")),
    ("1e-30", (USAGE, "unknown unit")),
    ("0.0000000001", (USAGE, "must be at least 1 byte")),  # rounds down to 0 bytes
    ("", (USAGE, "empty")),
    ("512M", ACCEPTED),
    ("1.5GiB", ACCEPTED),
    ("4096B", ACCEPTED),
    ("2 G", (USAGE, "unknown unit")),
    ("12Q", (USAGE, "unknown unit")),
]
ROUNDS_CASES = [
    ("abc", (USAGE, "not a whole number")),
    ("0", (USAGE, "out of range (1 to 1000)")),
    ("1", ACCEPTED),
    ("-1", (USAGE, "not a whole number")),
    ("99999999999999999999", (USAGE, "out of range (1 to 1000)")),  # no atoi wrap
    ("4294967297", (USAGE, "out of range (1 to 1000)")),            # 2^32 + 1
    ("1000", ACCEPTED),                                               # max
    ("1001", (USAGE, "out of range (1 to 1000)")),                   # no silent cap
    ("65", ACCEPTED),                                                 # past the old cap of 64
    ("+5", (USAGE, "not a whole number")),
    ("5x", (USAGE, "not a whole number")),
    (" 5", (USAGE, "not a whole number")),
    ("", (USAGE, "not a whole number")),
]
BACKEND_CASES = [  # names are judged by the library's options table, as the line is read
    ("abc", (USAGE, 'unknown backend "abc"')),
    ("0", (USAGE, 'unknown backend "0"')),
    ("1", (USAGE, 'unknown backend "1"')),
    ("-1", (USAGE, 'unknown backend "-1"')),
    ("x" * 300, (USAGE, "unknown backend")),
    ("", (USAGE, 'unknown backend ""')),
    ("host", ACCEPTED),
    ("auto", ACCEPTED),
]
FLAG_VALUES = ["abc", "0", "1", "-1", "99999999999999999999", ""]

COMMANDS = {  # command: options it takes
    "info": ["backend", "json"],
    "demo": ["backend", "size", "kv", "json", "quiet"],
    "bench": ["backend", "size", "kv", "rounds", "json", "quiet"],
}
ALL_OPTIONS = ["backend", "size", "kv", "rounds", "json", "quiet"]


def rows():
    """(argv, expected exit, message fragment or None, where: stdout/stderr)."""
    for cmd, opts in COMMANDS.items():
        for opt in opts:
            if opt in ("size", "kv"):
                for v, (code, msg) in SIZE_CASES:
                    if code == USAGE:
                        msg = f"--{opt} {v}: {msg}"
                    yield [cmd, f"--{opt}", v], code, msg, "stderr"
            elif opt == "rounds":
                for v, (code, msg) in ROUNDS_CASES:
                    if code == USAGE:
                        msg = f"--rounds {v}: {msg}"
                    yield [cmd, "--rounds", v], code, msg, "stderr"
            elif opt == "backend":
                for v, (code, msg) in BACKEND_CASES:
                    yield [cmd, "--backend", v], code, msg, "stderr"
                yield [cmd, "--backend=nosuch"], USAGE, 'unknown backend "nosuch"', "stderr"
            else:  # flags take no value
                for v in FLAG_VALUES:
                    yield [cmd, f"--{opt}={v}"], USAGE, f"--{opt} takes no value", "stderr"
        for opt in ALL_OPTIONS:
            if opt not in opts:  # another command's option
                yield [cmd, f"--{opt}", "1"], USAGE, f"unknown option --{opt}", "stderr"
        yield [cmd, "--bogus"], USAGE, "unknown option --bogus", "stderr"
        yield [cmd, "--bogus=3"], USAGE, "unknown option --bogus", "stderr"
        yield [cmd, "-x"], USAGE, "unknown option -x", "stderr"
        yield [cmd, "--json", "-q"], USAGE, "unknown option -q", "stderr"
        yield [cmd, "extra"], USAGE, "unexpected argument extra", "stderr"
        yield [cmd, "--help"], OK, f"usage: cumem {cmd}", "stdout"
        yield [cmd, "-h"], OK, f"usage: cumem {cmd}", "stdout"
        yield ["help", cmd], OK, f"usage: cumem {cmd}", "stdout"
    for cmd in ("demo", "bench"):
        yield [cmd, "--size"], USAGE, "--size needs a value", "stderr"
    yield ["bench", "--rounds"], USAGE, "--rounds needs a value", "stderr"
    yield ["info", "--backend"], USAGE, "--backend needs a value", "stderr"
    yield [], USAGE, "usage: cumem <command>", "stderr"
    yield ["nosuch"], USAGE, "unknown command nosuch", "stderr"
    yield ["--bogus"], USAGE, "unknown option --bogus", "stderr"
    yield ["help", "nosuch"], USAGE, "unknown command nosuch", "stderr"
    yield ["--help"], OK, "exit status: 0 done", "stdout"
    yield ["--version"], OK, f"cumem {VERSION}\n", "stdout"
    yield ["-V"], OK, f"cumem {VERSION}\n", "stdout"


def main():
    env = dict(os.environ)
    env.pop("CUMEM_BACKEND", None)
    env["CUMEM_COPY_CHUNK_MB"] = "0"  # refused at open: see ACCEPTED
    passed = failed = 0
    for argv, code, msg, where in rows():
        p = subprocess.run([CUMEM] + argv, capture_output=True, env=env, timeout=60)
        out = (p.stdout if where == "stdout" else p.stderr).decode("utf-8", "replace")
        ok = p.returncode == code and (msg is None or msg in out)
        if ok and code == USAGE and p.stdout:
            # a refused line prints nothing on stdout, or with --json one document
            try:
                doc = json.loads(p.stdout) if "--json" in argv else None
                ok = doc is not None and doc["exit_code"] == USAGE and doc["error"]["step"] == "arguments"
            except ValueError:
                ok = False
        shown = " ".join(repr(a) if (not a or " " in a) else a for a in argv)
        if len(shown) > 100:
            shown = shown[:97] + "..."
        if ok:
            passed += 1
        else:
            failed += 1
            print(f"FAIL cumem {shown}: exit {p.returncode} (expected {code}), expected {msg!r} on {where}")
            print("  stdout: " + p.stdout.decode("utf-8", "replace")[:300])
            print("  stderr: " + p.stderr.decode("utf-8", "replace")[:300])
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
