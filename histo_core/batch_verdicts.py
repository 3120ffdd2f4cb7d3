"""Per-batch verdicts, kept in the store: a bad batch costs its own night, never the next.

A data root of ``batches/<id>/`` grows by batches from people outside the team. Each
batch is judged on its own when it first appears, by the same row rules as the data
set (``validation``), and the verdict is recorded once in the store under
``batches/<root-key>/<batch-id>.json``:

* **accepted**: its rows join the data set (its quarantined rows stay out, as always);
* **rejected**: more of its labelled rows are quarantined than
  ``ValidationConfig.max_quarantine_fraction`` allows, it has no labelled image, its
  labels file cannot be read, or its S3 listing holds a key that cannot be mirrored.
  Its rows are left out of every later data set, loudly (run summary, event,
  ``histo data batches``), and the retrain goes on with the accepted batches;
* **readmitted**: an operator accepted a rejected batch as it is (``histo data readmit``).

A recorded verdict stands while the batch's content (ids, labels, pixels) is what was
judged; a batch changed in place is judged again, with a warning (batches are meant to
be append-only; a corrected batch is best uploaded under a new id). The data set's own
checks (size, both classes, balance) then run on the accepted rows.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import re
from typing import Any

import pandas as pd

from histo_core.config import ValidationConfig
from histo_core.storage import ConflictError, Store

log = logging.getLogger(__name__)


class VerdictError(LookupError):
    """Asked to change a verdict that does not exist or needs no change."""

USABLE = ("accepted", "readmitted")
BATCH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,127}")


def safe_batch_id(batch: str) -> bool:
    """Batch ids become store keys and event payloads: letters, digits and ``._=+-``."""
    return bool(BATCH_ID.fullmatch(batch))


def root_key(data: str) -> str:
    """The store folder of one data root's verdicts: a hash of its URI (local paths resolved)."""
    from pathlib import Path

    uri = data if "://" in data and not data.startswith("file://") else str(Path(data.removeprefix("file://"))
                                                                            .expanduser().resolve())
    return hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]


def content_hash(rows: pd.DataFrame) -> str:
    """What a verdict was about: the batch's ids, labels and pixel hashes, in id order."""
    digest = hashlib.sha256()
    for row in rows.sort_values(["id", "pixel_sha256"])[["id", "label", "pixel_sha256"]].itertuples(index=False):
        digest.update("\t".join(map(str, row)).encode() + b"\n")
    return digest.hexdigest()


def _top_reasons(rows: pd.DataFrame, limit: int = 3) -> str:
    counts = rows["reason"].value_counts().head(limit)
    return "; ".join(f"{count} x {reason[:120]}" for reason, count in counts.items())


def judge_batch(batch: str, rows: pd.DataFrame, faults: list[str], cfg: ValidationConfig) -> dict[str, Any]:
    """The verdict for one batch from its validated rows (``status``/``reason`` set)."""
    labelled = rows[rows["labelled"]]
    quarantined = labelled[labelled["status"] == "quarantined"]
    reasons = list(faults)
    if not len(labelled) and not faults:
        reasons.append("no labelled image: check that its labels file names the images")
    elif len(labelled) and len(quarantined) / len(labelled) > cfg.max_quarantine_fraction:
        reasons.append(f"{len(quarantined)} of {len(labelled)} labelled rows quarantined "
                       f"({len(quarantined) / len(labelled):.0%}, limit {cfg.max_quarantine_fraction:.0%}): "
                       + _top_reasons(quarantined))
    return {"batch": batch, "verdict": "rejected" if reasons else "accepted", "reasons": reasons, "faults": faults,
            "rows": int(len(labelled)), "quarantined": int(len(quarantined)), "content": content_hash(labelled),
            "decided": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def judge(rows: pd.DataFrame, faults: dict[str, list[str]], known: dict[str, dict[str, Any]],
          cfg: ValidationConfig) -> dict[str, dict[str, Any]]:
    """Every batch's verdict: the recorded one while its content is unchanged, else a new
    judgement (``new: True``). ``faults``: batch-level problems found before the rows
    (unreadable labels, refused S3 keys)."""
    verdicts: dict[str, dict[str, Any]] = {}
    groups = dict(tuple(rows[rows["batch"] != ""].groupby("batch"))) if len(rows) else {}
    for batch in sorted(set(groups) | set(faults)):
        group = groups.get(batch, rows.iloc[0:0])
        fresh = judge_batch(batch, group, faults.get(batch, []), cfg)
        recorded = known.get(batch)
        same_faults = recorded is not None and recorded.get("faults", []) == fresh["faults"]
        if recorded and recorded.get("content") == fresh["content"] and same_faults:
            verdicts[batch] = {**recorded, "new": False}
            continue
        if recorded:
            log.warning("batch %s changed since its verdict of %s (%s); judging it again", batch,
                        recorded.get("decided"), recorded.get("verdict"))
        verdicts[batch] = {**fresh, "new": True}
    return verdicts


class VerdictStore:
    """The verdicts of one data root, in a store; each written once per content."""

    def __init__(self, store: Store, data: str) -> None:
        self.store, self.data = store, data
        self.prefix = f"batches/{root_key(data)}"

    def _key(self, batch: str) -> str:
        if not safe_batch_id(batch):
            raise ValueError(f"batch id {batch!r}: use letters, digits and '._=+-' (at most 128)")
        return f"{self.prefix}/{batch}.json"

    def all(self) -> dict[str, dict[str, Any]]:
        records = {}
        for key in self.store.list(self.prefix):
            if key.endswith(".json"):
                record = self.store.get_json(key)
                if isinstance(record, dict) and "batch" in record:
                    records[record["batch"]] = record
        return records

    def record(self, verdict: dict[str, Any]) -> None:
        """File a new verdict; replaces an earlier one only if it is still the one read."""
        record = {k: v for k, v in verdict.items() if k != "new"} | {"data": self.data}
        key = self._key(record["batch"])
        _, etag = self.store.get_json_with_etag(key)
        try:
            self.store.put_json_if(key, record, etag)
        except ConflictError:
            log.info("batch %s: another run recorded its verdict at the same time", record["batch"])

    def readmit(self, batch: str, note: str) -> dict[str, Any]:
        """Accept a rejected batch as it is, from now on (an operator's decision)."""
        key = self._key(batch)
        record, etag = self.store.get_json_with_etag(key)
        if record is None:
            raise VerdictError(f"batch {batch!r} has no verdict for {self.data}; histo data batches lists them")
        if record.get("verdict") in USABLE:
            raise VerdictError(f"batch {batch!r} is already {record['verdict']}; nothing to readmit")
        updated = {**record, "verdict": "readmitted", "reasons": [f"readmitted by an operator: {note}"],
                   "previous": {k: record.get(k) for k in ("verdict", "reasons", "decided")},
                   "note": note, "decided": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
        self.store.put_json_if(key, updated, etag)
        return updated
