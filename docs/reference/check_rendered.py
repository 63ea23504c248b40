"""Check a built site: every public name of the API reference was rendered, with its docstring.

``python docs/reference/check_rendered.py SITE_DIR`` (scripts/docs runs it after ``mkdocs build``,
in the docs environment, where griffe is installed; nothing is imported). Each ``::: path``
directive of docs/reference/*.md renders a module or a class. The names expected on its page
are those the directive's object makes public, read from the source by griffe with the same
options mkdocs.yml gives mkdocstrings: a module's ``__all__`` (or, without one, its public
members), and for each class its own public members (``__init__`` is merged into the class).
Each must have an anchor ``id="path.name"`` in the page's HTML and, under it, docstring text
(an overriding method without a docstring shows its base's, as ``inspect.getdoc`` does).

It also fails for a name in ``switchyard.__all__`` whose page is missing, so a new public name
cannot go unrendered.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import griffe

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "reference"
SEARCH_PATHS = [ROOT / "core" / "src", *sorted((ROOT / "plugins").glob("*/src"))]
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)
_VOID = {
    "area",
    "base",
    "br",
    "col",
    "embed",
    "hr",
    "img",
    "input",
    "link",
    "meta",
    "source",
    "wbr",
}


def directives() -> Iterator[tuple[Path, str]]:
    """Every ``(page, object path)`` the reference pages render."""
    for page in sorted(REFERENCE.rglob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            yield page, match.group(1)


def _public(name: str) -> bool:
    return not name.startswith("_")  # mkdocs.yml: filters ["!^_"]


def _needs_docstring(name: str) -> bool:
    # implementations of pytest's hooks (the conformance kit's): pytest documents them
    return not name.startswith("pytest_")


def _target(obj: griffe.Object | griffe.Alias) -> griffe.Object:
    return obj.final_target if isinstance(obj, griffe.Alias) else obj


def expected_names(obj: griffe.Object) -> Iterator[tuple[str, griffe.Object]]:
    """``(anchor, object)`` for every name the directive's ``obj`` renders."""
    if obj.is_module:
        names = (
            [str(name) for name in obj.exports]
            if obj.exports is not None
            else [name for name, member in obj.members.items() if not member.is_alias]
        )
        members = [(name, obj.members[name]) for name in names if _public(name)]
        members = [(name, m) for name, m in members if not _target(m).is_module]
    else:
        members = [("", obj)]
    for name, member in members:
        anchor = f"{obj.path}.{name}" if name else obj.path
        target = _target(member)
        yield anchor, target
        if target.is_class:
            for child_name, child in target.members.items():
                if _public(child_name) and not child.is_alias:
                    yield f"{anchor}.{child_name}", child


class _Docstrings(HTMLParser):
    """The docstring text under each mkdocstrings heading of a page, by the heading's id.

    mkdocstrings renders an object as ``div.doc-object``: a heading carrying the id, then
    ``div.doc-contents`` with the docstring first, followed by section tables, the summary and
    the members (``div.doc-children``); only the text before those counts.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.text: dict[str, str] = {}
        self._stack: list[tuple[str, str]] = []  # (tag, role) of open elements
        self._objects: list[dict[str, object]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        role = ""
        current = self._objects[-1] if self._objects else None
        if tag == "div" and "doc-object" in classes:
            self._objects.append({"id": None, "parts": [], "state": "head"})
            role = "object"
        elif current is not None and "doc-heading" in classes and current["id"] is None:
            current["id"] = dict(attrs).get("id")
        elif current is not None and tag == "div" and "doc-contents" in classes:
            if current["state"] == "head":
                current["state"] = "docstring"
        elif current is not None and current["state"] == "docstring":
            if "doc-section-title" in classes or "doc-children" in classes:
                current["state"] = "done"
            elif "doc-class-bases" in classes or "doc-signature" in classes:
                role = "skip"
        self._stack.append((tag, role))

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        while self._stack:
            open_tag, role = self._stack.pop()
            if role == "object":
                obj = self._objects.pop()
                if isinstance(obj["id"], str):
                    self.text[obj["id"]] = " ".join("".join(obj["parts"]).split())  # type: ignore[arg-type]
            if open_tag == tag:
                break

    def handle_data(self, data: str) -> None:
        if not self._objects or any(role == "skip" for _, role in self._stack):
            return
        current = self._objects[-1]
        if current["state"] == "docstring":
            current["parts"].append(data)  # type: ignore[attr-defined]


def page_html(site: Path, page: Path) -> Path:
    """The built HTML of a reference page (mkdocs' directory URLs)."""
    relative = page.relative_to(ROOT / "docs").with_suffix("")
    if relative.name == "index":
        return site / relative.parent / "index.html"
    return site / relative / "index.html"


def check(site: Path) -> list[str]:
    loader = griffe.GriffeLoader(
        search_paths=[str(path) for path in SEARCH_PATHS],
    )
    problems: list[str] = []
    rendered: set[str] = set()
    checked = 0
    parsed: dict[Path, dict[str, str]] = {}
    found = list(directives())
    # switchyard first, as mkdocs.yml's preload_modules: the plugins' bases resolve in it
    for package in dict.fromkeys(["switchyard", *(path.split(".")[0] for _, path in found)]):
        loader.load(package)
    loader.resolve_aliases(implicit=False, external=False)
    for page, path in found:
        html_path = page_html(site, page)
        if html_path not in parsed:
            if not html_path.is_file():
                problems.append(f"{page.relative_to(ROOT)}: no built page {html_path}")
                continue
            parser = _Docstrings()
            parser.feed(html_path.read_text(encoding="utf-8"))
            parsed[html_path] = parser.text
        text = parsed[html_path]
        for anchor, obj in expected_names(loader.modules_collection[path]):
            checked += 1
            rendered.add(obj.path)
            rendered.add(anchor)
            where = f"{anchor} ({obj.relative_filepath}:{obj.lineno})"
            if anchor not in text:
                problems.append(f"{where}: not rendered in {html_path.relative_to(site)}")
            elif not text[anchor] and _needs_docstring(anchor.rsplit(".", 1)[-1]):
                problems.append(f"{where}: rendered without a docstring; write one")
    package = loader.modules_collection["switchyard"]
    for name in package.exports or ():
        obj = _target(package.members[str(name)])
        if f"switchyard.{name}" not in rendered and obj.path not in rendered:
            problems.append(
                f"switchyard.{name} ({obj.path}) is in switchyard.__all__ but no page of "
                "docs/reference renders it: add a `::: ...` directive for its module or class"
            )
    print(f"checked {checked} rendered names on {len(parsed)} reference pages", file=sys.stderr)
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print(
            "usage: python docs/reference/check_rendered.py SITE_DIR (a built site)",
            file=sys.stderr,
        )
        return 2
    problems = check(Path(argv[0]))
    for problem in problems:
        print(f"docs: {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} public names lack a rendered docstring", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
