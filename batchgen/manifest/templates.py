"""Templates: `{name}` placeholders in prompts and in the output file-name template.

Pure string logic, no I/O. Placeholders are plain identifiers only (`{subject}`); attribute
or index access (`{a.b}`, `{a[0]}`), conversions and format specs are refused, because a
manifest is untrusted text and `str.format` would otherwise let it reach into objects.
`{{` and `}}` stand for literal braces.
"""

from __future__ import annotations

import hashlib
import re
import string
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# Fields the output template may use, besides the prompts' vars and `tag_<name>` for tags
# (the same set `paths.template_fields` fills in when images are saved).
OUTPUT_FIELDS = frozenset(
    {"prompt_id", "job_id", "job_id16", "n", "ext", "variant", "quality", "size"}
)
# Letters, digits and these are all a literal part of the output template may hold: enough
# for folders and separators, never enough to climb out of the output folder.
_SAFE_LITERAL = re.compile(r"[A-Za-z0-9_./-]*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SLUG_BAD = re.compile(r"[^a-z0-9_]+")


class TemplateError(ValueError):
    """A template that cannot be parsed; the message is user-facing."""


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed template: literal text and placeholder names, alternating."""

    literals: tuple[str, ...]  # one more than fields
    fields: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        """Placeholder names in order of first use, without repeats."""
        return tuple(dict.fromkeys(self.fields))

    @property
    def literal_length(self) -> int:
        return sum(len(s) for s in self.literals)

    def render(self, values: Mapping[str, str]) -> str:
        parts = [self.literals[0]]
        for name, lit in zip(self.fields, self.literals[1:], strict=True):
            parts.append(values[name])
            parts.append(lit)
        return "".join(parts)


def parse(text: str) -> Template:
    """Parse `text`; raises TemplateError naming the first bad placeholder."""
    literals: list[str] = []
    fields: list[str] = []
    pending = ""
    try:
        pieces = list(string.Formatter().parse(text))
    except ValueError as exc:  # "Single '}' encountered", "unmatched '{'"
        raise TemplateError(f"{exc} (write {{{{ or }}}} for a literal brace)") from None
    for literal, name, spec, conv in pieces:
        pending += literal
        if name is None:
            continue
        if not _IDENT.fullmatch(name) or spec or conv:
            shown = "{" + name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise TemplateError(f"placeholder {shown} must be a plain name like {{subject}}")
        literals.append(pending)
        fields.append(name)
        pending = ""
    literals.append(pending)
    return Template(tuple(literals), tuple(fields))


def slug(value: str, *, max_length: int = 60) -> str:
    """A lower-case id of letters, digits, `_` and `-`: never empty, safe as a path segment."""
    return _ascii_slug(value, max_length) or "x"


def _ascii_slug(value: str, max_length: int) -> str:
    ascii_text = unicodedata.normalize("NFKD", value).encode("ascii", "ignore").decode()
    return _SLUG_BAD.sub("-", ascii_text.lower()).strip("-._")[:max_length].strip("-._")


def prompt_slug(text: str, *, words: int = 6) -> str:
    """A readable default prompt id: the first few words of the prompt, slugged.

    Latin text is folded to ASCII (`café` -> `cafe`), as it always was, so existing ids stay
    put. A prompt with nothing ASCII in its first words keeps its own letters (`赤い狐`), and
    one with no letters at all (emoji) gets `p-` and 8 hex digits of its text's sha256: stable,
    and different for different prompts, where all of them used to be `x`, `x-2`, ...
    """
    cleaned = re.sub(r"[{}]", " ", text)
    head = " ".join(cleaned.split()[:words])
    return (
        _ascii_slug(head, 48)
        or _native_slug(head, 48)
        or "p-" + hashlib.sha256(text.encode()).hexdigest()[:8]
    )


def _native_slug(value: str, max_length: int) -> str:
    """Letters, marks and digits of any script, lower-cased; every other run becomes `-`."""
    kept = [
        ch if unicodedata.category(ch)[0] in "LMN" else "-"
        for ch in unicodedata.normalize("NFKC", value).lower()
    ]
    s = re.sub(r"-+", "-", "".join(kept)).strip("-")
    return s[:max_length].strip("-")


def output_template_problems(text: str, var_names: Sequence[str]) -> list[str]:
    """Every reason `text` cannot be the output file-name template (empty when it is fine).

    Whether each prompt has the vars and tags the template names is checked by the caller.
    """
    try:
        tpl = parse(text)
    except TemplateError as exc:
        return [str(exc)]
    out: list[str] = []
    allowed = OUTPUT_FIELDS | set(var_names)
    for name in tpl.names:
        if name not in allowed and not name.startswith("tag_"):
            out.append(
                f"unknown field {{{name}}}; use {', '.join(sorted(OUTPUT_FIELDS))}, a var or "
                f"tag_<name>"
            )
    names = set(tpl.fields)
    if not ({"job_id", "job_id16"} & names and "n" in names and "ext" in names):
        out.append(
            "must contain {job_id16} (or {job_id}), {n} and {ext}, so that no two images share "
            "a file name"
        )
    for lit in tpl.literals:
        if not _SAFE_LITERAL.fullmatch(lit):
            out.append(f"text {lit!r} may only hold letters, digits, '_', '-', '.' and '/'")
            break
    literal_path = "{}".join(tpl.literals)
    segments = literal_path.split("/")
    if literal_path.startswith("/") or any(seg.startswith(".") for seg in segments):
        out.append(
            "must be a relative path that stays inside the output folder (no "
            "leading '/', no '..', no hidden '.' folders)"
        )
    return out
