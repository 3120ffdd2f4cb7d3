"""Every HTML page a validation writes (ours and GX's) holds data-derived text as text:
ids and labels with markup from the hostile corpus never become elements or attributes
(issue 22, item 1). Pages are parsed with ``html.parser``, not searched with patterns."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from hostile import HOSTILE_LABELS, MARKER, write_hostile_root
from histo_core.config import ValidationConfig
from histo_core.data.manifest import build_manifest
from histo_core.validation import validate_manifest

# Where the corpus's markup would land if a page inserted it raw.
ACTIVE = {"script", "style", "b", "img", "svg", "a", "iframe", "object", "embed", "i", "strong", "em"}


class _Page(HTMLParser):
    """Collects what data-derived markup would have created: elements and attributes
    carrying the corpus's marker, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.injected: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.open.append(tag)
        for name, value in attrs:
            if MARKER in name or MARKER in (value or "") or (name.startswith("on") and "alert" in (value or "")):
                self.injected.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.open:
            while self.open.pop() != tag:
                pass

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if MARKER in data and self.open and self.open[-1] in ACTIVE:
            self.injected.append(f"<{self.open[-1]}>{data[:60]}")


def _parse(page: Path) -> _Page:
    parsed = _Page()
    parsed.feed(page.read_text(encoding="utf-8"))
    return parsed


def test_no_page_turns_hostile_ids_or_labels_into_markup(tmp_path):
    write_hostile_root(tmp_path / "data")
    validate_manifest(build_manifest(tmp_path / "data"), ValidationConfig(max_quarantine_fraction=0.9),
                      docs_dir=tmp_path / "docs")
    pages = sorted((tmp_path / "docs").rglob("*.html"))
    assert len(pages) >= 3  # our index, GX's expectation page and its validation page
    shown = ""
    for page in pages:
        parsed = _parse(page)
        assert parsed.injected == [], page
        shown += "\n".join(parsed.text)
    # not vacuous: the hostile values are on the pages, as the text a reviewer reads
    assert f'<script>alert("{MARKER}")</script>' in shown and HOSTILE_LABELS[0] in shown


def test_the_checker_sees_raw_markup():
    """The parser above flags a page that inserts the corpus raw."""
    page = _Page()
    page.feed(f"<td><b>{MARKER}</b></td><td><img src=x onerror=alert(1)></td><script>alert('{MARKER}')</script>")
    assert len(page.injected) == 3
