"""A griffe extension (mkdocs.yml loads it) that renders switchyard's docstring conventions as
the API reference shows them, so the sources keep the notation Python readers and IDEs know.

- Sphinx roles: ``:class:`~switchyard.AcceleratorEntry``` (and ``:meth:``, ``:attr:``,
  ``:func:``, ``:data:``, ``:mod:``, ``:exc:``, ``:obj:``) become cross-references to the
  rendered object. The name is resolved in the docstring's own scope, as Sphinx does
  (``:attr:`device_type``` inside ``Accelerator`` is
  ``switchyard.accelerator.Accelerator.device_type``); a target no page renders (a private
  helper, torch) stays code, not a warning.
- The first paragraph is put on one line, which the summary tables show whole.
- ``Example::`` before an indented block (reStructuredText's literal block) loses one colon;
  Markdown already shows the indented block as code.
- Fields described in their class's docstring: an entry's field list (``name:`` on a line of its
  own or followed by the text, the text indented below) moves to the field's own docstring, and
  an attribute without a docstring that the class's ``Attributes:`` section describes moves
  there too (the section would repeat the member summary), and one that its ``Args:`` section
  describes (a constructor argument kept as ``self.name``; not a property) gets that text.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(class|meth|attr|func|data|mod|exc|obj|const):`(~?)\.?([^`<>]+?)`")
_LITERAL_BLOCK = re.compile(r"(\S)::\n(\s*\n)", re.MULTILINE)
_FIELD = re.compile(r"^(\w+):(?:[ \t]+(\S.*))?$")
_SECTION_ITEM = re.compile(r"^(\w+)(?: \([^)]*\))?:(?:[ \t]+(\S.*))?$")
_OURS = ("switchyard", "switchyard_")


def _resolve(scope: griffe.Object, target: str) -> str | None:
    """The full path ``target`` names in ``scope``, if it is one of switchyard's objects."""
    if target.startswith(_OURS):
        return target
    head, _, rest = target.partition(".")
    try:
        path = scope.resolve(head)
    except (griffe.NameResolutionError, KeyError):
        return None
    if not path.startswith(_OURS):
        return None
    return f"{path}.{rest}" if rest else path


def render_markup(scope: griffe.Object, text: str) -> str:
    """``text`` with its Sphinx roles as cross-references and its ``::`` blocks as Markdown."""

    def role(match: re.Match[str]) -> str:
        kind, short, target = match.groups()
        shown = target.rsplit(".", 1)[-1] if short else target
        if kind in ("meth", "func"):
            shown += "()"
        code = f"<code>{html.escape(shown)}</code>"
        path = _resolve(scope, target)
        if path is None:
            return code
        return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'

    text = _ROLE.sub(role, text)
    return unwrap_summary(_LITERAL_BLOCK.sub(r"\1:\n\2", text))


def unwrap_summary(text: str) -> str:
    """``text`` with its first paragraph on one line: the summary tables show a docstring's
    first line, and these docstrings wrap their first sentence (the page renders the same)."""
    first, sep, rest = text.partition("\n\n")
    lines = first.splitlines()
    plain = all(
        line.strip() and not line.startswith((" ", "\t", "-", "*", "```", ">")) for line in lines
    )
    if len(lines) < 2 or not plain or _SECTION_ITEM.match(lines[0]):
        return text
    return " ".join(line.strip() for line in lines) + sep + rest


def split_field_list(text: str, fields: set[str]) -> tuple[str, dict[str, str]]:
    """``text`` without its field-list items (``name:`` at the margin, where ``name`` is one of
    ``fields``, with the indented lines below), and each item's description."""
    lines = text.splitlines()
    kept: list[str] = []
    described: dict[str, str] = {}
    index = 0
    while index < len(lines):
        match = _FIELD.match(lines[index])
        index += 1
        if not (match and match.group(1) in fields):
            kept.append(lines[index - 1])
            continue
        parts = [match.group(2) or ""]
        while index < len(lines) and lines[index].startswith((" ", "\t")):
            parts.append(lines[index].strip())
            index += 1
        described[match.group(1)] = " ".join(part for part in parts if part)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), described


def split_attributes_section(text: str) -> tuple[str, dict[str, str]]:
    """``text`` without its Google ``Attributes:`` section, and what it says of each name (the
    members' own docstrings show it: the section would repeat the class's member summary)."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line == "Attributes:"]
    if not starts:
        return text, {}
    start = starts[0]
    end = start + 1
    while end < len(lines) and (lines[end].startswith((" ", "\t")) or not lines[end].strip()):
        end += 1
    block = textwrap.dedent("\n".join(lines[start + 1 : end]))
    described: dict[str, str] = {}
    current = ""
    for item in block.splitlines():
        match = _SECTION_ITEM.match(item)
        if match and not item.startswith((" ", "\t")):
            current = match.group(1)
            described[current] = match.group(2) or ""
        elif current and item.strip():
            described[current] = f"{described[current]} {item.strip()}".strip()
    kept = lines[:start] + lines[end:]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip(), described


def _section_descriptions(cls: griffe.Class) -> dict[str, str]:
    """What the class docstring's ``Args:`` and ``Attributes:`` sections say of each name."""
    if cls.docstring is None:
        return {}
    found: dict[str, str] = {}
    for section in cls.docstring.parse(griffe.Parser.google, warnings=False):
        if section.kind in (
            griffe.DocstringSectionKind.parameters,
            griffe.DocstringSectionKind.attributes,
        ):
            for item in section.value:
                if item.description:
                    found.setdefault(item.name.lstrip("*"), item.description)
    return found


def _describe_fields(cls: griffe.Class) -> None:
    attributes = {
        name
        for name, member in cls.members.items()
        if not member.is_alias and member.is_attribute and not name.startswith("_")
    }
    if cls.docstring is not None and attributes:
        text, described = split_field_list(cls.docstring.value, attributes)
        text, in_section = split_attributes_section(text)
        described.update(in_section)
        if described:
            cls.docstring.value = text
        for name, description in described.items():
            member = cls.members[name]
            if description and member.docstring is None:
                member.docstring = griffe.Docstring(description, parent=member)
    sections = _section_descriptions(cls)
    for name in attributes:
        member = cls.members[name]
        # a property returns what was made of the argument: it says so itself
        if "property" in member.labels:
            continue
        if member.docstring is None and sections.get(name):
            member.docstring = griffe.Docstring(sections[name], parent=member)


class SwitchyardDocstrings(griffe.Extension):
    """Rewrites the docstrings of a loaded package once its object tree is complete."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        objects: list[griffe.Object] = []
        stack: list[griffe.Object] = [pkg]
        while stack:
            obj = stack.pop()
            objects.append(obj)
            stack.extend(member for member in obj.members.values() if not member.is_alias)
        for obj in objects:
            if isinstance(obj, griffe.Class):
                _describe_fields(obj)
        # an inherited docstring is the base's object: render each once, in its own scope
        seen: set[int] = set()
        for obj in objects:
            docstring = obj.docstring
            if docstring is None or id(docstring) in seen:
                continue
            seen.add(id(docstring))
            scope = docstring.parent if isinstance(docstring.parent, griffe.Object) else obj
            docstring.value = render_markup(scope, docstring.value)
