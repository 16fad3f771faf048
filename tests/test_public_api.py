"""The public surface: everything in ``__all__`` exists, sorted; nothing private leaks."""

import dataclasses
import difflib
import importlib
import inspect
import os
from pathlib import Path
from types import ModuleType

import workgen


def test_all_is_sorted_and_complete() -> None:
    assert workgen.__all__ == sorted(workgen.__all__)
    for name in workgen.__all__:
        assert getattr(workgen, name) is not None


def test_every_error_is_a_workgen_error() -> None:
    errors = [getattr(workgen, n) for n in workgen.__all__ if n.endswith(("Error", "Lost",
              "Closed", "Rejected", "Exhausted", "Skipped", "Exceeded", "Found", "Unavailable"))]
    assert errors
    assert all(issubclass(e, workgen.WorkgenError) for e in errors)


# -- the golden surface ----------------------------------------------------------------------

GOLDEN = Path(__file__).parent / "golden" / "public_api.txt"
MODULES = ("workgen", "workgen.requestor.events", "workgen.requestor.vm", "workgen.testing",
           "workgen.backends.base", "workgen.images")


def _members(module: ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, v in vars(module).items() if not n.startswith("_")
                 and getattr(v, "__module__", None) == module.__name__]
    return sorted(names)


def _signature(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


def _describe(name: str, obj: object) -> list[str]:
    if inspect.ismodule(obj):
        return [f"module {name}"]
    if inspect.isclass(obj):
        bases = ", ".join(b.__name__ for b in obj.__bases__ if b is not object)
        lines = [f"class {name}({bases})"]
        if dataclasses.is_dataclass(obj):
            lines += [f"    field {f.name}: {f.type}" for f in dataclasses.fields(obj)]
        for attr, value in sorted(vars(obj).items()):
            if attr.startswith("_") and attr != "__init__":
                continue
            if isinstance(value, property):
                lines.append(f"    property {attr}")
            elif isinstance(value, (staticmethod, classmethod)):
                lines.append(f"    {type(value).__name__} {attr}{_signature(value.__func__)}")
            elif inspect.isfunction(value):
                kind = "async def" if inspect.iscoroutinefunction(value) or \
                    inspect.isasyncgenfunction(value) else "def"
                lines.append(f"    {kind} {attr}{_signature(value)}")
        return lines
    if callable(obj):
        kind = "async def" if inspect.iscoroutinefunction(obj) else "def"
        return [f"{kind} {name}{_signature(obj)}"]
    return [f"{name}: {type(obj).__name__}"]


def surface() -> str:
    lines: list[str] = []
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        lines.append(f"# {module_name}")
        for name in _members(module):
            lines += _describe(name, getattr(module, name))
        lines.append("")
    return "\n".join(lines)


def test_the_public_api_is_what_the_golden_file_says() -> None:
    """A change to the public API must be deliberate: regenerate the file with
    ``WORKGEN_UPDATE_GOLDEN=1`` and let the diff show what users will see change."""
    current = surface()
    if os.environ.get("WORKGEN_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(current)
    expected = GOLDEN.read_text()
    if current != expected:
        diff = "\n".join(difflib.unified_diff(expected.splitlines(), current.splitlines(),
                                              "golden", "now", lineterm=""))
        raise AssertionError("the public API changed; if that is meant, run the test with "
                             f"WORKGEN_UPDATE_GOLDEN=1 and commit the file:\n{diff}")
