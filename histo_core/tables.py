"""CSV files the project writes, and reads back: atomic, and safe to open in a spreadsheet.

Ids, labels and paths come from other people, and the CSVs we write (``manifest.csv``,
``split.csv``, ``predictions.csv``, a ``histo predict`` submission) are opened in Excel
or LibreOffice by the people who review them. A cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is run there as a formula
(``=HYPERLINK("http://evil.example","x")``). Following OWASP's advice on CSV injection,
every text cell that starts with one of those characters, or with the quote itself, is
written with one ``'`` in front: the spreadsheet shows it as text. The mapping is
reversible, and ``read_csv`` here reverses it, so our own readers get the original ids.
Numbers are written as numbers (a negative number is a number, not a formula).

Validation also quarantines rows whose id starts with a formula character (a reason,
not a silent change), so such ids never reach a model; the quoting here is for every
file that lists them anyway (the manifest lists quarantined rows with their reasons).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from histo_core.atomic import atomic_write

FORMULA_LEAD = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def neutralise(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text; ``restore`` gives it back unchanged."""
    return QUOTE + cell if cell.startswith((*FORMULA_LEAD, QUOTE)) else cell


def restore(cell: str) -> str:
    """The inverse of ``neutralise``."""
    return cell[1:] if cell.startswith(QUOTE) else cell


def _text_columns(table: pd.DataFrame) -> list[str]:
    types = pd.api.types
    return [c for c in table.columns if types.is_object_dtype(table[c]) or types.is_string_dtype(table[c])]


def write_csv(table: pd.DataFrame, path: Path | str) -> Path:
    """``table`` to ``path`` atomically, every text cell ``neutralise``-d, no index."""
    safe = table.copy()
    for column in _text_columns(safe):
        safe[column] = safe[column].map(lambda v: neutralise(v) if isinstance(v, str) else v)
    return atomic_write(Path(path), lambda tmp: safe.to_csv(tmp, index=False))


def read_csv(path: Path | str, **kwargs: Any) -> pd.DataFrame:
    """A CSV written by ``write_csv``, its text cells ``restore``-d; ``kwargs`` as for
    ``pandas.read_csv``."""
    table = pd.read_csv(path, **kwargs)
    for column in _text_columns(table):
        table[column] = table[column].map(lambda v: restore(v) if isinstance(v, str) else v)
    return table
