"""Build the cumem Python package: pip install --no-build-isolation .

Two C extensions, each compiled together with the C core (src/*.c):
  cumem._C               the binding of include/cumem.h; the same shared object
                         exports cumem_torch_malloc / cumem_torch_free for
                         torch.cuda.memory.CUDAPluggableAllocator
  cumem.cumem_allocator  vLLM's extension interface (init_module, ...,
                         my_malloc / my_free)
No PyTorch and no CUDA toolkit are needed to build: the driver is loaded at
run time, only cuda.h is read. Set CUDA_HOME if setup.py cannot find it.
"""

import glob
import os
import re
import site
import sys
import sysconfig

from setuptools import Extension, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _site_dirs():
    dirs = list(sys.path)
    try:
        dirs += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenvs lack getsitepackages
        pass
    dirs.append(sysconfig.get_paths()["purelib"])
    return [d for d in dict.fromkeys(dirs) if d and os.path.isdir(d)]


def find_cuda_include():
    """The directory holding cuda.h: $CUDA_HOME / $CUDA_PATH, nvcc's toolkit,
    /usr/local/cuda, the system include dir, then headers shipped in pip
    packages (nvidia-cuda-runtime / cuda-toolkit wheels, triton)."""
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH", "CUDA_ROOT"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "include"))
    for path_dir in os.environ.get("PATH", "").split(os.pathsep):
        if path_dir and os.path.exists(os.path.join(path_dir, "nvcc")):
            candidates.append(os.path.join(os.path.dirname(path_dir), "include"))
    candidates += ["/usr/local/cuda/include"]
    candidates += sorted(glob.glob("/usr/local/cuda-*/include"), reverse=True)
    candidates += ["/usr/include", "/opt/cuda/include"]
    for d in _site_dirs():
        candidates += sorted(glob.glob(os.path.join(d, "nvidia", "cu*", "include")), reverse=True)
        candidates += [
            os.path.join(d, "nvidia", "cuda_runtime", "include"),
            os.path.join(d, "triton", "backends", "nvidia", "include"),
        ]
    for c in candidates:
        if os.path.isfile(os.path.join(c, "cuda.h")):
            return c
    sys.exit(
        "cumem: cuda.h not found. It is only read at build time (the driver is "
        "loaded at run time). Install the CUDA headers (the CUDA toolkit, or "
        "the nvidia-cuda-runtime pip package) or set CUDA_HOME. Searched:\n  "
        + "\n  ".join(dict.fromkeys(candidates))
    )


def core_sources():
    # Relative paths: setuptools wants them, and the objects then land under
    # build_temp/src/ for both extensions without clashing.
    srcs = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "src", "*.c")))
    if not srcs:
        sys.exit("cumem: no C core sources in src/")
    return srcs


def extension(name, main_source):
    return Extension(
        name,
        sources=[main_source] + core_sources(),
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src"), find_cuda_include()],
        libraries=["dl", "pthread"],
        extra_compile_args=[
            "-std=gnu11",
            # Only CUMEM_API symbols, the entry points and PyInit_* are
            # exported; the core's internals stay inside each .so.
            "-fvisibility=hidden",
            "-Wall",
            "-Wno-missing-field-initializers",
        ],
        # Each .so binds its calls into the core to its own copy, even if
        # another copy (libcumem.so, the other extension) is loaded globally.
        extra_link_args=["-Wl,-Bsymbolic"],
    )


def version():
    """The version, from the one place it is written: include/cumem.h."""
    with open(os.path.join(ROOT, "include", "cumem.h")) as f:
        parts = dict(re.findall(r"^#define CUMEM_VERSION_(MAJOR|MINOR|PATCH) (\d+)", f.read(), re.M))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


os.chdir(ROOT)  # relative source paths, whatever directory pip runs us from

setup(
    name="cumem",
    version=version(),
    description="Sleepable GPU memory on the CUDA VMM driver API (vLLM sleep mode / torch_memory_saver drop-in)",
    python_requires=">=3.9",
    package_dir={"": "python"},
    packages=["cumem"],
    ext_modules=[
        extension("cumem._C", "python/cumem/_C.c"),
        extension("cumem.cumem_allocator", "python/cumem/cumem_allocator.c"),
    ],
    # Keep setuptools' scratch files out of the CMake build tree's top level.
    options={"build": {"build_base": "build/setuptools"}},
    zip_safe=False,
)
