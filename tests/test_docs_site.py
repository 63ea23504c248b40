"""The docs site (mkdocs.yml, built by scripts/docs) covers the public API, and each public name
has a docstring to render.

These checks need no docs environment: they import the packages (as users do) and read
mkdocs.yml and the pages as text. scripts/docs then checks the built HTML itself
(docs/reference/check_rendered.py): every name below must be rendered there with its docstring.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import switchyard
import switchyard.hookspecs
import switchyard.testing

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
REFERENCE = DOCS / "reference"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
PLUGIN_PACKAGES = sorted(
    path.parent.name for path in ROOT.glob("plugins/*/src/switchyard_*/__init__.py")
)


def rendered_paths() -> set[str]:
    """What the reference pages render: the object path of each ``::: path`` directive."""
    return {
        match.group(1)
        for page in REFERENCE.rglob("*.md")
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8"))
    }


def attribute_docstring(module: ModuleType, name: str) -> str | None:
    """The string literal after ``name = ...`` at the top of ``module`` (what griffe renders as
    the docstring of a module attribute, and what ``inspect`` cannot see)."""
    body = ast.parse(inspect.getsource(module)).body
    for node, after in itertools.pairwise(body):
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        named = any(isinstance(t, ast.Name) and t.id == name for t in targets)
        if named and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
            value = after.value.value
            return value if isinstance(value, str) else None
    return None


def docstring(owner: ModuleType, name: str) -> str | None:
    obj = getattr(owner, name)
    if inspect.isclass(obj) or inspect.isroutine(obj):
        return inspect.getdoc(obj)
    # a value (a type alias, a marker instance): its docstring is in the module that assigns it
    for module in list(sys.modules.values()):
        if (
            isinstance(module, ModuleType)
            and module.__name__.split(".")[0].startswith("switchyard")
            and vars(module).get(name) is obj
            and (found := attribute_docstring(module, name))
        ):
            return found
    return None


def exported() -> Iterator[tuple[str, ModuleType, str]]:
    """``(qualified name, package, name)`` for every name the reference renders by package."""
    packages = [switchyard, switchyard.testing]
    packages += [importlib.import_module(name) for name in PLUGIN_PACKAGES]
    for package in packages:
        for name in package.__all__:
            value = getattr(package, name)
            if inspect.ismodule(value):
                continue
            yield f"{package.__name__}.{name}", package, name


def member_doc(cls: type, name: str) -> str | None:
    """A member's docstring, its own or, for an override without one, that of the first base
    class from switchyard that has one (the site shows the same, through
    griffe-inherited-docstrings); torch's docstrings do not count, the site cannot show them."""
    for klass in cls.__mro__:
        if not klass.__module__.split(".")[0].startswith("switchyard") or name not in vars(klass):
            continue
        raw = vars(klass)[name]
        function = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
        if function.__doc__ and function.__doc__.strip():
            return inspect.cleandoc(function.__doc__)
    return None


def public_methods(cls: type) -> Iterator[str]:
    """The methods and properties ``cls`` defines itself (what its page lists under it)."""
    for name, raw in vars(cls).items():
        if name.startswith(("_", "pytest_")):
            continue  # pytest documents the hooks of its own that the conformance kit implements
        if isinstance(raw, (property, classmethod, staticmethod)) or inspect.isfunction(raw):
            yield name


EXPORTED = list(exported())


# the conformance kit's implementations of pytest's own hooks: pytest documents them
DOCUMENTED = [item for item in EXPORTED if not item[2].startswith("pytest_")]


@pytest.mark.parametrize(
    ("qualified", "package", "name"), DOCUMENTED, ids=[q for q, _, _ in DOCUMENTED]
)
def test_every_exported_name_has_a_docstring(
    qualified: str, package: ModuleType, name: str
) -> None:
    assert docstring(package, name), f"{qualified} has no docstring for the API reference"


CLASSES = [
    (qualified, getattr(package, name))
    for qualified, package, name in EXPORTED
    if inspect.isclass(getattr(package, name))
]


@pytest.mark.parametrize(("qualified", "cls"), CLASSES, ids=[q for q, _ in CLASSES])
def test_every_public_method_of_an_exported_class_has_a_docstring(qualified: str, cls: Any) -> None:
    missing = [name for name in public_methods(cls) if not member_doc(cls, name)]
    assert not missing, (
        f"{qualified}: public methods without a docstring (nor one in a switchyard base "
        f"class): {', '.join(missing)}. Write one: the API reference renders it"
    )


def test_every_hook_specification_has_a_docstring() -> None:
    hooks = [
        name
        for name, value in vars(switchyard.hookspecs).items()
        if name.startswith("switchyard_") and inspect.isfunction(value)
    ]
    assert len(hooks) >= 9, hooks  # the registration, report, format and lifecycle hooks
    missing = [name for name in hooks if not inspect.getdoc(getattr(switchyard.hookspecs, name))]
    assert not missing, f"hook specifications without a docstring: {missing}"


def test_the_reference_renders_the_package_the_hooks_the_kit_and_every_plugin() -> None:
    rendered = rendered_paths()
    wanted = {"switchyard", "switchyard.hookspecs", "switchyard.testing", *PLUGIN_PACKAGES}
    assert len(PLUGIN_PACKAGES) >= 9, PLUGIN_PACKAGES
    missing = sorted(wanted - rendered)
    assert not missing, (
        f"no page under docs/reference renders {missing}: add `::: NAME` for each (a plugin "
        "goes in docs/reference/plugins.md)"
    )


def _nav_pages() -> list[str]:
    text = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    # the nav block: from "nav:" to the next top-level key
    nav = re.split(r"\n(?=[^\s#-])", text.split("\nnav:\n", 1)[1], maxsplit=1)[0]
    return re.findall(r"^\s*- (?:[^:\n]+: )?(\S+\.md)\s*$", nav, flags=re.MULTILINE)


def test_every_docs_page_is_in_the_site_navigation() -> None:
    pages = {path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md")}
    nav = _nav_pages()
    assert "index.md" in nav
    assert "reference/switchyard.md" in nav
    missing = sorted(pages - set(nav))
    assert not missing, (
        f"docs pages missing from mkdocs.yml's nav (the strict build fails on them): {missing}"
    )
    dangling = sorted(set(nav) - pages)
    assert not dangling, f"mkdocs.yml's nav names pages that do not exist: {dangling}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_docs_pages_link_only_inside_docs() -> None:
    """A relative link out of docs/ (``../examples/train.py``) works on GitHub but not in the
    site; the pages name such files as code (`examples/train.py`) instead."""
    outside = []
    for page in sorted(DOCS.rglob("*.md")):
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            resolved = (page.parent / target.split("#", 1)[0]).resolve()
            if not resolved.is_relative_to(DOCS):
                outside.append(f"{page.relative_to(ROOT)}: {target}")
    assert not outside, f"links that leave docs/ break in the site: {outside}"
