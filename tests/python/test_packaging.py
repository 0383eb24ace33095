"""The Python package as a user gets it, offline: an sdist of this tree that
holds every file the build reads, builds in a temporary directory and
imports from there; a wheel built from it installs the native parts
(libcumem.so.0, cumem/bin/cumem), the stubs and the `cumem` console script;
and without the means to build a wheel, setup.py says so in one line.

These run the interpreter that runs pytest, in subprocesses, with no network
(pip gets --no-index and --no-build-isolation)."""

import email.parser
import glob
import os
import re
import subprocess
import sys
import tarfile
import zipfile

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MiB = 1 << 20

# Every file the build reads (sources, headers, stubs) and what a source
# distribution must carry besides.
SDIST_MUST_HOLD = ["LICENSE", "README.md", "pyproject.toml", "setup.py", "MANIFEST.in"]
SDIST_GLOBS = ["include/*.h", "src/*.c", "src/*.h", "tools/*.c", "tools/*.h", "preload/*.c", "preload/*.h",
               "python/cumem/*.py", "python/cumem/*.c", "python/cumem/*.pyi", "python/cumem/py.typed"]


def header_version():
    with open(os.path.join(ROOT, "include", "cumem.h")) as f:
        parts = dict(re.findall(r"^#define CUMEM_VERSION_(MAJOR|MINOR|PATCH) (\d+)", f.read(), re.M))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


def run(args, cwd, env=None, timeout=600):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args} failed ({r.returncode}):\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return r


def clean_env(**extra):
    """The environment without this test run's PYTHONPATH (which points at
    the package under test), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def unpacked_sdist(tmp_path_factory):
    """(path of the sdist, the directory it unpacked into)."""
    tmp = tmp_path_factory.mktemp("sdist")
    # egg-info goes to tmp too: nothing is written into the source tree.
    run([sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(tmp), "sdist", "--dist-dir", str(tmp)],
        cwd=ROOT, env=clean_env())
    (sdist,) = glob.glob(str(tmp / "cumem-*.tar.gz"))
    assert os.path.basename(sdist) == f"cumem-{header_version()}.tar.gz"
    safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "unpacked", **safe)
    (top,) = os.listdir(tmp / "unpacked")
    return sdist, str(tmp / "unpacked" / top)


def test_sdist_holds_every_file_the_build_reads(unpacked_sdist):
    _, top = unpacked_sdist
    wanted = set(SDIST_MUST_HOLD)
    for pattern in SDIST_GLOBS:
        wanted.update(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    missing = sorted(p for p in wanted if not os.path.isfile(os.path.join(top, p)))
    assert not missing, f"not in the sdist: {missing}"
    built = [p for p in glob.glob(os.path.join(top, "**", "*"), recursive=True) if re.search(r"\.so(\.\d+)?$|\.o$", p)]
    assert not built, f"build outputs in the sdist: {built}"


def check_package(lib_dir, cumem_cmd):
    """Import the package from lib_dir in a fresh interpreter (elsewhere
    than the source tree) and run the `cumem` command `cumem_cmd`."""
    probe = (
        "import os, cumem\n"
        "from cumem import _C\n"
        f"assert cumem.__version__ == {header_version()!r}, cumem.__version__\n"
        f"assert os.path.realpath(_C.LIBRARY).startswith(os.path.realpath({lib_dir!r})), _C.LIBRARY\n"
        "with cumem.Instance(backend='host') as inst:\n"
        f"    p = inst.alloc({MiB}, tag='w')\n"
        f"    inst.copy_to_device(p, b'x' * {MiB})\n"
        "    inst.sleep('w', 'w'); inst.wake('w')\n"
        f"    assert inst.copy_to_host(p, {MiB}) == b'x' * {MiB}\n"
        "print('imported from', os.path.dirname(cumem.__file__))\n"
    )
    env = clean_env(PYTHONPATH=lib_dir, CUMEM_BACKEND="host")
    r = run([sys.executable, "-c", probe], cwd="/", env=env)
    assert "imported from " + os.path.join(lib_dir, "cumem") in r.stdout
    r = run(cumem_cmd + ["info"], cwd="/", env=env)
    assert f"cumem {header_version()}, backend: host" in r.stdout


def test_sdist_builds_and_imports(unpacked_sdist, tmp_path):
    _, top = unpacked_sdist
    lib = str(tmp_path / "lib")
    run([sys.executable, "setup.py", "-q", "build", "--build-lib", lib, "--build-temp", str(tmp_path / "tmp")],
        cwd=top, env=clean_env())
    for native in ("libcumem.so.0", "bin/cumem"):
        assert os.path.isfile(os.path.join(lib, "cumem", native)), native
    check_package(lib, [os.path.join(lib, "cumem", "bin", "cumem")])


def can_build_wheels():
    """pip builds wheels through bdist_wheel: in setuptools from 70.1, before
    that from the `wheel` package."""
    code = (
        "import re, setuptools, importlib.util as u\n"
        "v = tuple(int(x) for x in re.findall(r'\\d+', setuptools.__version__)[:2])\n"
        "raise SystemExit(0 if v >= (70, 1) or u.find_spec('wheel') else 1)\n"
    )
    return subprocess.run([sys.executable, "-c", code]).returncode == 0


def has_pip():
    return subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True).returncode == 0


def test_wheel_from_the_sdist_installs_the_command(unpacked_sdist, tmp_path):
    if not has_pip():
        pytest.skip(f"no pip for {sys.executable}")
    if not can_build_wheels():
        pytest.skip("setuptools < 70.1 without the wheel package (test_no_wheel_support_is_explained covers it)")
    _, top = unpacked_sdist
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-build-isolation", "--no-deps", "--no-index",
         "-w", str(wheels), top], cwd=str(tmp_path), env=clean_env())
    (whl,) = glob.glob(str(wheels / "cumem-*.whl"))
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        for f in ("cumem/libcumem.so.0", "cumem/bin/cumem", "cumem/_C.pyi", "cumem/cumem_allocator.pyi",
                  "cumem/py.typed", "cumem/_cli.py"):
            assert f in names, f
        assert z.getinfo("cumem/bin/cumem").external_attr >> 16 & 0o111, "cumem/bin/cumem is not executable"
        assert not [n for n in names if n.endswith(".c")], "C sources in the wheel"
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = email.parser.Parser().parsestr(z.read(f"{dist_info}/METADATA").decode())
        entry_points = z.read(f"{dist_info}/entry_points.txt").decode()
    assert meta["Name"] == "cumem" and meta["Version"] == header_version()
    assert meta["Requires-Python"] == ">=3.9" and "cumem contributors" in meta["Author"]
    assert "MIT" in (meta.get("License") or meta.get("License-Expression") or "")
    assert meta["Summary"] and meta["Description-Content-Type"] == "text/markdown"
    assert "torch" in meta.get_all("Provides-Extra")
    assert re.search(r"^cumem = cumem\._cli:main$", entry_points, re.M)

    target = tmp_path / "site"
    # A private target directory: Debian's "externally managed" guard is
    # about the system's site-packages, not this.
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(target), whl],
        cwd=str(tmp_path), env=clean_env(PIP_BREAK_SYSTEM_PACKAGES="1"))
    script = target / "bin" / "cumem"
    assert script.is_file(), "the console script was not installed"
    check_package(str(target), [str(script)])

    if "cumem/libcumem_preload.so" in names:
        # `cumem run` finds the interposer of the installed package, and the
        # program it runs holds one core: the interposer's libcumem.so.0,
        # which cumem._C then shares.
        probe = (
            "import os, cumem\n"
            "maps = {l.split()[-1] for l in open('/proc/self/maps') if '/' in l}\n"
            "libs = sorted(os.path.basename(p) for p in maps if 'libcumem' in p)\n"
            "assert libs == ['libcumem.so.0', 'libcumem_preload.so'], libs\n"
            "assert os.path.dirname(cumem._C.LIBRARY) == os.path.dirname(cumem.__file__)\n"
            "print('preloaded')\n"
        )
        env = clean_env(PYTHONPATH=str(target), CUMEM_BACKEND="host")
        r = run([str(script), "run", "--", sys.executable, "-c", probe], cwd="/", env=env)
        assert "preloaded" in r.stdout


def test_no_wheel_support_is_explained(tmp_path):
    """With setuptools < 70.1 and no `wheel`, pip's metadata and wheel steps
    stop with one line naming what to install; newer setuptools build
    wheels themselves, and then nothing is said."""
    import setuptools

    version = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    env = clean_env()
    if version < (70, 1):  # hide `wheel`, if installed, from setup.py
        blocker = tmp_path / "blocked"
        blocker.mkdir()
        (blocker / "wheel.py").write_text("raise ImportError('wheel is hidden for this test')\n")
        env["PYTHONPATH"] = str(blocker)
    r = subprocess.run([sys.executable, "setup.py", "dist_info", "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    if version >= (70, 1):
        assert r.returncode == 0 and "cumem:" not in r.stderr, r.stderr
    else:
        assert r.returncode == 1
        lines = [line for line in r.stderr.splitlines() if line.startswith("cumem:")]
        assert len(lines) == 1 and "'wheel' package" in lines[0] and "python3-wheel" in lines[0], r.stderr


def test_console_script_runs_the_command_with_its_arguments(tmp_path):
    """cumem._cli.main execs cumem/bin/cumem with the same arguments: the
    command's own output and exit status come back."""
    import cumem._cli

    exe = cumem._cli.command_path()
    assert os.access(exe, os.X_OK), f"{exe} was not built with the package"
    env = dict(os.environ, CUMEM_BACKEND="host")
    code = "import sys, cumem._cli; sys.argv = ['cumem'] + sys.argv[1:]; cumem._cli.main()"
    ok = subprocess.run([sys.executable, "-c", code, "info"], env=env, capture_output=True, text=True, timeout=120)
    direct = subprocess.run([exe, "info"], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == direct.returncode == 0 and ok.stdout == direct.stdout
    bad = subprocess.run([sys.executable, "-c", code, "no-such-command"], env=env, capture_output=True, text=True,
                         timeout=120)
    direct_bad = subprocess.run([exe, "no-such-command"], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == direct_bad.returncode != 0
