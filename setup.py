"""Build the cumem Python package: pip install --no-build-isolation .

The metadata is in pyproject.toml; this file builds the native parts, all
into the package directory (cumem/), and reads the version from
include/cumem.h (the one place it is written). build_ext makes, in order:

  libcumem.so.0         the C core (src/*.c), built ONCE: the only copy of the
                        core in a process. Everything below links it and finds
                        it beside itself through an $ORIGIN rpath. It also
                        exports cumem_torch_malloc / cumem_torch_free for
                        torch.cuda.memory.CUDAPluggableAllocator.
  libcumem_preload.so   the LD_PRELOAD interposer (preload/*.c), when the
                        tree has one
  bin/cumem             the `cumem` command (tools/*.c, the core linked in as
                        objects, like CMake's cumem_static), which the `cumem`
                        console script runs
  _C*.so                cumem._C, the binding of include/cumem.h
  cumem_allocator*.so   cumem.cumem_allocator, vLLM's extension interface
                        (init_module, ..., my_malloc / my_free)

No PyTorch and no CUDA toolkit are needed to build: the driver is loaded at
run time, only cuda.h is read. Set CUDA_HOME if setup.py cannot find it.
"""

import dataclasses
import glob
import os
import re
import site
import sys
import sysconfig

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))
PACKAGE = "cumem"


def version():
    """The version, from the one place it is written: include/cumem.h."""
    with open(os.path.join(ROOT, "include", "cumem.h")) as f:
        parts = dict(re.findall(r"^#define CUMEM_VERSION_(MAJOR|MINOR|PATCH) (\d+)", f.read(), re.M))
    return "{MAJOR}.{MINOR}.{PATCH}".format(**parts)


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


def sources(pattern):
    """The files matching a glob under ROOT, as sorted relative paths
    (setuptools wants them; objects then land under build_temp/<dir>/)."""
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))


# Every header a native part may include: a change rebuilds them all.
HEADERS = ("include/*.h", "src/*.h", "tools/*.h", "preload/*.h")


def headers():
    """The files matching HEADERS."""
    return [h for pattern in HEADERS for h in sources(pattern)]


CFLAGS = [
    "-std=gnu11",
    # Only what is marked CUMEM_API (or EXPORT) leaves a shared object: the
    # core's internals (cumem__*) stay inside libcumem.so.0.
    "-fvisibility=hidden",
    "-Wall",
    "-Wno-missing-field-initializers",
]


@dataclasses.dataclass(frozen=True)
class Native:
    """A native file that build_ext makes in the package directory, before
    the extensions (which link the libraries among them)."""

    output: str  # path inside the package directory
    sources: str  # glob of its C sources, relative to the tree's root
    program: bool = False  # an executable, else a shared library
    soname: str = ""  # the SONAME a library records
    links: tuple = ()  # earlier entries it links (DT_NEEDED, found by $ORIGIN rpath)
    objects_of: tuple = ()  # globs whose objects are linked in (a static core)
    libraries: tuple = ("dl", "pthread")
    optional: bool = False  # skipped when no source matches


CORE = "libcumem.so.0"
NATIVE = [
    Native(CORE, "src/*.c", soname=CORE),
    Native("libcumem_preload.so", "preload/*.c", links=(CORE,), optional=True),
    Native("bin/cumem", "tools/*.c", program=True, objects_of=("src/*.c",), libraries=("m", "dl", "pthread")),
]
# What every Python extension links.
EXTENSION_LINKS = (CORE,)


def rpath_to_package(output):
    """-Wl,-rpath for a file at `output` (inside the package directory) to
    find the libraries at the package directory's top."""
    rel = os.path.relpath(".", os.path.dirname(output) or ".")
    return "-Wl,-rpath,$ORIGIN" + ("" if rel == "." else "/" + rel)


class build_ext(_build_ext):
    """setuptools' build_ext, making the NATIVE files first with the same
    compiler object (and so the same compiler, flags and ABI as Python's)."""

    def package_dir(self):
        # Where build_ext puts the extensions (setuptools builds in build_lib
        # and copies to the source tree afterwards for --inplace).
        return os.path.dirname(self.get_ext_fullpath(PACKAGE + "._C"))

    def build_extensions(self):
        cuda_include = find_cuda_include()
        self._objects = {}  # source -> object, compiled once per run
        built = self.build_native(self.package_dir(), cuda_include)
        for ext in self.extensions:
            ext.include_dirs.append(cuda_include)
            ext.extra_objects = list(ext.extra_objects) + [built[name] for name in EXTENSION_LINKS]
        super().build_extensions()

    def build_native(self, pkg_dir, cuda_include):
        built = {}
        header_files = headers()
        for n in NATIVE:
            srcs = sources(n.sources)
            if not srcs:
                if n.optional:
                    continue
                sys.exit(f"cumem: no sources match {n.sources}")
            static = [s for pattern in n.objects_of for s in sources(pattern)]
            linked = [built[name] for name in n.links]
            out = os.path.join(pkg_dir, n.output)
            built[n.output] = out
            if not (self.force or _newer_group(srcs + static + header_files + linked, out)):
                continue
            objects = self.compile_once(srcs + static, cuda_include)
            args = [rpath_to_package(n.output)] if n.links else []
            if n.soname:
                args.append("-Wl,-soname," + n.soname)
            self.mkpath(os.path.dirname(out))
            self.compiler.link(
                self.compiler.EXECUTABLE if n.program else self.compiler.SHARED_LIBRARY,
                objects + linked,
                out,
                libraries=list(n.libraries),
                extra_postargs=args,
                debug=self.debug,
                target_lang="c",
            )
        return built

    def compile_once(self, srcs, cuda_include):
        todo = [s for s in dict.fromkeys(srcs) if s not in self._objects]
        if todo:
            objects = self.compiler.compile(
                todo,
                output_dir=self.build_temp,
                include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src"), cuda_include],
                extra_postargs=CFLAGS,
                debug=self.debug,
            )
            self._objects.update(zip(todo, objects))
        return [self._objects[s] for s in srcs]

    def native_outputs(self, pkg_dir):
        return [os.path.join(pkg_dir, n.output) for n in NATIVE if not n.optional or sources(n.sources)]

    def get_outputs(self):
        outputs = super().get_outputs()
        if not self.inplace:
            outputs += self.native_outputs(os.path.join(self.build_lib, PACKAGE))
        return outputs

    def _inplace_native_copies(self):
        """(built, in the source tree) for each native file, for --inplace."""
        inplace_dir = self.get_finalized_command("build_py").get_package_dir(PACKAGE)
        built = self.native_outputs(os.path.join(self.build_lib, PACKAGE))
        return list(zip(built, self.native_outputs(inplace_dir)))

    def get_output_mapping(self):
        mapping = super().get_output_mapping()
        if self.inplace:  # editable installs: the native files go to the source tree too
            mapping.update(self._inplace_native_copies())
        return mapping

    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for src, dst in self._inplace_native_copies():
            self.mkpath(os.path.dirname(dst))
            self.copy_file(src, dst, level=self.verbose)


def _newer_group(deps, target):
    if not os.path.exists(target):
        return True
    mtime = os.path.getmtime(target)
    return any(os.path.getmtime(d) > mtime for d in deps)


def extension(name, main_source):
    return Extension(
        name,
        sources=[main_source],
        include_dirs=[os.path.join(ROOT, "include"), os.path.join(ROOT, "src")],
        depends=headers(),
        libraries=["dl", "pthread"],
        extra_compile_args=CFLAGS,
        # The core is libcumem.so.0 beside the extension (build_ext adds it
        # to the link): one copy for every extension in the process.
        extra_link_args=[rpath_to_package("_C.so")],
    )


def check_wheel_support():
    """pip builds a wheel (and, before that, its metadata: dist_info) through
    the bdist_wheel command, which setuptools has only from 70.1 on; before
    that it comes from the `wheel` package. Without either, say so in one
    line instead of setuptools' "invalid command 'bdist_wheel'"."""
    if not {"bdist_wheel", "dist_info", "editable_wheel"} & set(sys.argv[1:]):
        return
    import setuptools

    major_minor = tuple(int(x) for x in re.findall(r"\d+", setuptools.__version__)[:2])
    if major_minor >= (70, 1):
        return
    try:
        import wheel  # noqa: F401
    except ImportError:
        sys.exit(
            f"cumem: building a wheel with setuptools {setuptools.__version__} needs the 'wheel' package: "
            "install it (Debian: apt install python3-wheel; pip: pip install wheel) or setuptools >= 70.1"
        )


os.chdir(ROOT)  # relative source paths, whatever directory pip runs us from
check_wheel_support()

setup(
    version=version(),
    package_dir={"": "python"},
    packages=[PACKAGE],
    package_data={PACKAGE: ["py.typed", "*.pyi"]},
    include_package_data=False,  # MANIFEST.in is for the sdist: no C sources in the package
    ext_modules=[
        extension("cumem._C", "python/cumem/_C.c"),
        extension("cumem.cumem_allocator", "python/cumem/cumem_allocator.c"),
    ],
    cmdclass={"build_ext": build_ext},
    # Keep setuptools' scratch files out of the CMake build tree's top level.
    options={"build": {"build_base": "build/setuptools"}},
    zip_safe=False,
)
