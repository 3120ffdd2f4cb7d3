"""A corpus of hostile ids and labels, generated here (nothing binary is committed).

Ids, labels and file names come from other people. Each string below is one an attacker
or a careless export has sent: markup that would run in a page, cells a spreadsheet
would run as formulas, characters that break a markdown table or a log line. A new
reader or writer of data-derived text is tested by putting this corpus through it
(``write_hostile_root``), and by asserting that the outputs hold it only as text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MARKER = "xss-7f3"  # every markup payload carries it: a page that runs one shows it as an element

MARKUP_IDS = [
    f'<script>alert("{MARKER}")</script>',
    f"<img src=x onerror=alert('{MARKER}')>",
    f"<b>{MARKER}-bold</b>",
    f'"><svg onload=alert("{MARKER}")>',
    f"[{MARKER}](javascript:alert(1))",
]
FORMULA_IDS = [
    '=HYPERLINK("http://evil.example","x")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(1+1)",
]
ODD_IDS = [
    "id|with|pipes",
    "`code`",
    "{id}{0}%s$column",
    "right\u202eto-left",
    "quote'and\"double",
]
CONTROL_IDS = ["tab\tinside", "line\nbreak"]
LONG_ID = "L" * 300  # longer than any file name: the row has no image, and the id rule names its length
HOSTILE_LABELS = [f"<b>{MARKER}-label</b>", "=1+1", f'<script>alert("{MARKER}-label")</script>']


def _tissue(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 200, (96, 96, 3), dtype=np.uint8)


def write_hostile_root(root: Path, good: int = 40) -> pd.DataFrame:
    """A labels-CSV data root: ``good`` clean rows (both classes), one row per hostile id
    (a real image each where the id can name a file, label 0 or 1) and rows with hostile labels. Returns the labels
    table as written (what each row's id and label are)."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = [(f"good{i}", str(i % 2)) for i in range(good)]
    rows += [(image_id, str(n % 2)) for n, image_id in enumerate(MARKUP_IDS + FORMULA_IDS + ODD_IDS + CONTROL_IDS)]
    rows += [(f"badlabel{n}", label) for n, label in enumerate(HOSTILE_LABELS)]
    for n, (image_id, _) in enumerate(rows):
        if "/" not in image_id:  # '</script>' cannot name a file: that row is quarantined as an unsafe name
            Image.fromarray(_tissue(n)).save(images / f"{image_id}.png")
    rows.append((LONG_ID, "1"))
    table = pd.DataFrame(rows, columns=["id", "label"])
    table.to_csv(root / "labels.csv", index=False)
    return table
