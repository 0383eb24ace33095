"""Every public function, class, method and property of the package has a
docstring: the Python modules' and the C modules' alike (help() and IDEs
show them). Public: not starting with "_", defined in the package."""

import importlib
import inspect

import pytest

MODULES = ["cumem", "cumem._C", "cumem.cumem_allocator", "cumem._cli", "cumem._torch", "cumem._vllm", "cumem._tms"]


def public_objects(module):
    """(qualified name, object) of every public function and class defined
    in the module, and of the public methods and properties of those
    classes."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue  # constants, instances, modules
        if not getattr(obj, "__module__", "").startswith("cumem"):
            continue  # imported from elsewhere
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for attr, value in vars(obj).items():
                if attr.startswith("_"):
                    continue
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if inspect.isroutine(value) or inspect.isdatadescriptor(value):
                    yield f"{module.__name__}.{name}.{attr}", value


@pytest.mark.parametrize("module_name", MODULES)
def test_everything_public_has_a_docstring(module_name):
    module = importlib.import_module(module_name)
    assert (module.__doc__ or "").strip(), f"{module_name} has no module docstring"
    objects = dict(public_objects(module))
    assert objects, f"{module_name}: nothing public found"
    missing = [name for name, obj in objects.items() if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"no docstring: {missing}"


def test_c_docstrings_are_more_than_the_signature():
    """A C doc string that begins with a signature must say something after
    it (inspect strips the signature into __text_signature__)."""
    from cumem import _C, cumem_allocator

    routines = [getattr(_C.Instance, n) for n in vars(_C.Instance) if not n.startswith("__")]
    routines += [f for m in (_C, cumem_allocator) for f in vars(m).values() if inspect.isbuiltin(f)]
    for f in routines:
        if inspect.isroutine(f):
            assert len((f.__doc__ or "").strip()) > 10, f"{f.__qualname__}: {f.__doc__!r}"
