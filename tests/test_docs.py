"""The examples in the docstrings are true (they show the notebook's numbers)."""

import doctest

import pytest

import clatrous.conv
import clatrous.layers
import clatrous.pyramid
import clatrous.reference


@pytest.mark.parametrize("module", [clatrous.conv, clatrous.layers, clatrous.pyramid, clatrous.reference])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0


PUBLIC = [
    clatrous.conv1d,
    clatrous.conv2d,
    clatrous.depthwise_conv2d,
    clatrous.aspp,
    clatrous.dilate,
    clatrous.devices,
    clatrous.default_device,
    clatrous.Conv2D.from_config,
    clatrous.Conv2D.set_weights,
    clatrous.Conv2D.build,
    clatrous.Conv2D.warmup,
    clatrous.Conv2D.__call__,
]


@pytest.mark.parametrize("function", PUBLIC, ids=lambda f: f.__qualname__)
def test_public_functions_are_typed_and_document_what_they_raise_or_return(function):
    # Issue 15: type hints, a Raises section in each public docstring.
    import typing

    hints = typing.get_type_hints(function)
    assert "return" in hints
    doc = function.__doc__ or ""
    assert "Raises\n" in doc or "Returns\n" in doc and function is clatrous.devices, function.__qualname__


def test_the_package_is_marked_typed():
    from importlib.resources import files

    assert files("clatrous").joinpath("py.typed").is_file()


def test_the_readme_layout_names_every_source_file():
    # Issue 10: "the README's layout section matches the tree".
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"[\w.]+\.(?:py|cl|h|sh|md)\b", layout))
    files = [
        *(p.name for p in (root / "clatrous").glob("*.py") if p.name != "__init__.py"),
        *(p.name for p in (root / "kernels").iterdir() if p.suffix in (".cl", ".h")),
        *(p.name for p in (root / "benchmarks").iterdir() if p.suffix in (".py", ".sh", ".md")),
    ]
    missing = sorted(name for name in files if name not in named)
    assert not missing, f"README's layout section does not name {missing}"
    gone = sorted(name for name in named if name.endswith((".cl", ".h")) and name not in files)
    assert not gone, f"README's layout section names kernels that are not there: {gone}"
