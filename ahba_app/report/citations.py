"""The methods document: paragraphs of text blocks, their ``[@key]`` citation markers numbered
in order of first use, and the references they cite (``references.json``).

All prose written through this module is released under CC0 1.0.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Mapping
from urllib.parse import quote

__all__ = ["Block", "MethodsDocument", "Paragraph", "Reference", "load_references"]


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Reference:
    """One bibliographic reference: ``key`` as used in ``[@key]`` markers."""

    key: str
    citation: str
    short: str = ""
    doi: str | None = None
    url: str | None = None

    @property
    def doi_url(self) -> str | None:
        return f"https://doi.org/{quote(self.doi, safe='/():;')}" if self.doi else None

    def markdown(self) -> str:
        """The full citation followed by its DOI (or URL)."""
        tail = f" doi:{self.doi}" if self.doi else (f" {self.url}" if self.url else "")
        return self.citation + tail


@lru_cache(maxsize=1)
def _reference_table() -> dict[str, Reference]:
    text = resources.files("ahba_app.report").joinpath("references.json").read_text("utf-8")
    refs = {}
    for entry in json.loads(text)["references"]:
        ref = Reference(key=entry["key"], citation=entry["citation"], short=entry.get("short", ""),
                        doi=entry.get("doi"), url=entry.get("url"))
        refs[ref.key] = ref
    return refs


def load_references() -> dict[str, Reference]:
    """Every reference that the methods text may cite, by key (a fresh dict)."""
    return dict(_reference_table())




@dataclass
class Block:
    """A piece of a paragraph: running ``text`` or a display ``formula``."""

    kind: str
    text: str


@dataclass
class Paragraph:
    """One stage's paragraph: ``stage`` id, a short ``title`` and its blocks."""

    stage: str
    title: str
    blocks: list[Block] = field(default_factory=list)

    def say(self, *sentences: str) -> "Paragraph":
        """Append sentences to the running text (a new text block after a formula)."""
        text = " ".join(s.strip() for s in sentences if s and s.strip())
        if not text:
            return self
        if self.blocks and self.blocks[-1].kind == "text":
            self.blocks[-1].text += " " + text
        else:
            self.blocks.append(Block("text", text))
        return self

    def formula(self, *formulas: str) -> "Paragraph":
        """Append display formulas; consecutive ones share one block, one per line."""
        for f in formulas:
            if self.blocks and self.blocks[-1].kind == "formula":
                self.blocks[-1].text += "\n" + f
            else:
                self.blocks.append(Block("formula", f))
        return self

    @property
    def empty(self) -> bool:
        return not any(b.text.strip() for b in self.blocks)




# ------------------------------------------------------------------------------------------------
# Citations
# ------------------------------------------------------------------------------------------------
_CITE = re.compile(r"\s?\[((?:@[\w.-]+)(?:\s*;\s*@[\w.-]+)*)\]")


@dataclass
class MethodsDocument:
    """The methods text with numbered citations and the references it cites, in order."""

    paragraphs: list[Paragraph]
    references: list[tuple[int, Reference]]

    @property
    def keys(self) -> list[str]:
        return [ref.key for _, ref in self.references]

    def markdown(self, heading: str | None = None, references_heading: str = "References") -> str:
        out = [f"## {heading}", ""] if heading else []
        for par in self.paragraphs:
            for block in par.blocks:
                if block.kind == "formula":
                    out.extend("    " + line for line in block.text.splitlines())
                else:
                    if out and out[-1].startswith("    "):
                        out.append("")
                    out.append(block.text)
                    out.append("")
            if out and out[-1] != "":
                out.append("")
        if self.references:
            out += [f"### {references_heading}", ""]
            out += [f"{n}. {ref.markdown()}" for n, ref in self.references]
            out.append("")
        return "\n".join(out).rstrip() + "\n"


def _resolve(paragraphs: list[Paragraph], table: Mapping[str, Reference]) -> MethodsDocument:
    numbers: dict[str, int] = {}

    def number(match: re.Match) -> str:
        keys = [k.strip().lstrip("@") for k in match.group(1).split(";")]
        for key in keys:
            if key not in table:
                raise ValueError(f"Unknown reference key {key!r}: add it to "
                                 f"ahba_app/report/references.json (known: {sorted(table)}).")
            numbers.setdefault(key, len(numbers) + 1)
        nums = sorted({numbers[k] for k in keys})
        return " [" + ", ".join(str(n) for n in nums) + "]"

    resolved = []
    for par in paragraphs:
        blocks = [Block(b.kind, _CITE.sub(number, b.text) if b.kind == "text" else b.text)
                  for b in par.blocks]
        resolved.append(Paragraph(par.stage, par.title, blocks))
    refs = [(n, table[k]) for k, n in sorted(numbers.items(), key=lambda kv: kv[1])]
    return MethodsDocument(resolved, refs)
