"""The type stubs installed with the package (cumem/_C.pyi,
cumem/cumem_allocator.pyi, py.typed) against the C modules they describe:
every name in a stub exists in its module, every name of the module is in
its stub, and where the module states a signature (its doc strings begin
with one) the stub has the same parameters. So the stubs cannot drift."""

import ast
import importlib
import inspect
import os

import pytest

STUBBED = ["cumem._C", "cumem.cumem_allocator"]

# What every module or class has without declaring it.
IMPLICIT = {"__doc__", "__file__", "__loader__", "__name__", "__package__", "__spec__", "__module__", "__weakref__",
            "__dict__", "__new__"}


class Stub:
    """The names a .pyi file declares: functions, classes (with their
    members) and annotated constants. Plain assignments (X = ...) are
    stub-only type aliases."""

    def __init__(self, path):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        self.functions, self.classes, self.constants, self.aliases = {}, {}, set(), set()
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                self.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
            elif isinstance(node, ast.AnnAssign):
                self.constants.add(node.target.id)
            elif isinstance(node, ast.Assign):
                self.aliases.update(t.id for t in node.targets)

    def names(self):
        return set(self.functions) | set(self.classes) | self.constants


def stub_of(module_name):
    module = importlib.import_module(module_name)
    path = os.path.join(os.path.dirname(module.__file__), module_name.rpartition(".")[2] + ".pyi")
    assert os.path.isfile(path), f"{path} is not installed with the package"
    return module, Stub(path)


def class_members(node):
    """Methods and properties of a stub class (annotated names are instance
    attributes, checked elsewhere)."""
    return {n.name: n for n in node.body if isinstance(n, ast.FunctionDef)}


def is_property(fn):
    return any(isinstance(d, ast.Name) and d.id == "property" for d in fn.decorator_list)


def stub_parameters(fn, drop_first):
    """[(name, kind, default)] of a stub function; default is inspect's
    empty, a literal, or Ellipsis for `...`."""
    a = fn.args
    positional = [(p, inspect.Parameter.POSITIONAL_ONLY) for p in a.posonlyargs]
    positional += [(p, inspect.Parameter.POSITIONAL_OR_KEYWORD) for p in a.args]
    defaults = [inspect.Parameter.empty] * (len(positional) - len(a.defaults)) + list(a.defaults)
    out = [(p.arg, kind, d) for (p, kind), d in zip(positional, defaults)]
    if a.vararg:
        out.append((a.vararg.arg, inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.empty))
    out += [(p.arg, inspect.Parameter.KEYWORD_ONLY, d if d is not None else inspect.Parameter.empty)
            for p, d in zip(a.kwonlyargs, a.kw_defaults)]
    if a.kwarg:
        out.append((a.kwarg.arg, inspect.Parameter.VAR_KEYWORD, inspect.Parameter.empty))
    out = out[1:] if drop_first else out
    return [(n, k, d if d is inspect.Parameter.empty else ast.literal_eval(d)) for n, k, d in out]


def runtime_parameters(obj, drop_first):
    try:
        sig = inspect.signature(obj)
    except (ValueError, TypeError):
        return None  # no signature stated: names are checked, not parameters
    params = list(sig.parameters.values())
    params = params[1:] if drop_first else params
    return [(p.name, p.kind, p.default) for p in params]


def assert_same_parameters(where, stub_fn, obj, drop_first):
    runtime = runtime_parameters(obj, drop_first)
    assert runtime is not None, f"{where}: the module states no signature (doc string must start with one)"
    stub = stub_parameters(stub_fn, drop_first)
    assert [(n, k) for n, k, _ in stub] == [(n, k) for n, k, _ in runtime], f"{where}: stub {stub} != module {runtime}"
    for (name, _, s), (_, _, r) in zip(stub, runtime):
        if s is not Ellipsis:
            assert s == r, f"{where}: default of {name} is {s!r} in the stub, {r!r} in the module"


@pytest.mark.parametrize("module_name", STUBBED)
def test_stub_names_are_the_module_names(module_name):
    module, stub = stub_of(module_name)
    public = {n for n in vars(module) if n not in IMPLICIT}
    assert stub.names() - public == set(), "in the stub but not in the module"
    assert public - stub.names() == set(), "in the module but not in the stub"
    assert not stub.aliases & public, "a stub-only alias shadows a module name"


@pytest.mark.parametrize("module_name", STUBBED)
def test_stub_classes_have_the_module_members(module_name):
    module, stub = stub_of(module_name)
    for cls_name, node in stub.classes.items():
        cls = getattr(module, cls_name)
        assert inspect.isclass(cls)
        for base in node.bases:  # e.g. CumemError(RuntimeError)
            assert any(b.__name__ == ast.unparse(base) for b in cls.__mro__[1:]), f"{cls_name} is no {ast.unparse(base)}"
        declared = class_members(node)
        actual = {n for n in vars(cls) if n not in IMPLICIT}
        assert set(declared) - actual == set(), f"{cls_name}: in the stub but not in the class"
        assert actual - set(declared) == set(), f"{cls_name}: in the class but not in the stub"


@pytest.mark.parametrize("module_name", STUBBED)
def test_stub_signatures_match(module_name):
    module, stub = stub_of(module_name)
    for name, fn in stub.functions.items():
        assert_same_parameters(f"{module_name}.{name}", fn, getattr(module, name), drop_first=False)
    for cls_name, node in stub.classes.items():
        cls = getattr(module, cls_name)
        for name, fn in class_members(node).items():
            where = f"{module_name}.{cls_name}.{name}"
            if is_property(fn):
                assert isinstance(inspect.getattr_static(cls, name), property) or hasattr(
                    inspect.getattr_static(cls, name), "__get__"
                ), f"{where} is no property"
            elif name == "__init__":  # stated on the class (its doc string), without self
                assert_same_parameters(where, _without_self(fn), cls, drop_first=False)
            else:
                assert_same_parameters(where, fn, getattr(cls, name), drop_first=True)


def _without_self(fn):
    """A copy of a stub method without its first parameter."""
    copy = ast.parse(ast.unparse(fn)).body[0]
    if copy.args.posonlyargs:
        copy.args.posonlyargs = copy.args.posonlyargs[1:]
    else:
        copy.args.args = copy.args.args[1:]
    return copy


def test_error_code_attribute_is_declared_and_set():
    """CumemError's annotated `code` is an instance attribute: a raised error
    has it."""
    from cumem import _C

    _, stub = stub_of("cumem._C")
    annotated = {n.target.id for n in stub.classes["CumemError"].body if isinstance(n, ast.AnnAssign)}
    assert annotated == {"code"}
    with pytest.raises(_C.CumemError) as e:
        _C.Instance(backend="no-such-backend")
    assert e.value.code == _C.EINVAL


def test_package_is_marked_typed():
    import cumem

    assert os.path.isfile(os.path.join(os.path.dirname(cumem.__file__), "py.typed"))
