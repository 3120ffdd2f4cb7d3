"""Model versions and the champion pointer, on top of a ``Store``.

Layout::

    models/<name>/versions/<version>/model.pt, metrics.json, ...
    models/<name>/champion.json        {"version": ..., "sha256": ..., "auc": ...}
    models/<name>/events/<time>-<kind>-<version>.json

A version is uploaded and verified completely before ``champion.json`` may point at it,
and the pointer moves only by a conditional write, so a reader always finds a complete,
checksummed version and two concurrent promotions cannot both win.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from histo_core.errors import UnservableVersionError
from histo_core.storage import ChecksumError, ConflictError, CorruptObjectError, Store, StoreError, sha256_file

log = logging.getLogger(__name__)

WEIGHTS = "model.pt"
VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class RegistryStateError(ValueError):
    """The registry holds nothing to act on (no champion, no earlier one): asked, not broken."""


@dataclass(frozen=True)
class Champion:
    version: str
    record: dict[str, Any]
    etag: str


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


def check_version_id(version: str) -> str:
    """A version id names one folder: no separators, no ``..``, nothing a path could use."""
    if not isinstance(version, str) or not VERSION_ID.fullmatch(version) or ".." in version:
        raise RegistryStateError(f"version {version!r} is not a version id (letters, digits, '.', '_', '-'; "
                                 "no path): histo models list shows the versions")
    return version


class Registry:
    """``weights_check(path)`` raises when a downloaded ``model.pt`` cannot serve (for the
    pipeline: ``checkpoint.check_loadable``); without it, versions are checked for their
    weights' presence and checksum only (the registry's own tests file stand-in bytes)."""

    def __init__(self, store: Store, name: str, weights_check: Callable[[Path], None] | None = None) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' or '-'")
        self.store, self.name, self.weights_check = store, name, weights_check
        self.prefix = f"models/{name}"

    def new_version_id(self) -> str:
        """A sortable, unique version id: UTC time to the microsecond."""
        return f"v{_now()}"

    def publish_version(self, version: str, files: dict[str, Path], metadata: dict[str, Any]) -> dict[str, Any]:
        """Upload a version's files, then its ``version.json`` listing their checksums.

        ``files`` must include ``model.pt``. ``version.json`` is written last, so a version
        without it is incomplete and is never made champion.
        """
        if WEIGHTS not in files:
            raise ValueError(f"a version needs {WEIGHTS}; got {sorted(files)}")
        base = f"{self.prefix}/versions/{version}"
        checksums: dict[str, str] = {}
        try:
            for name, local in files.items():
                expected = sha256_file(local)
                checksums[name] = expected
                stored = self.store.put_file(local, f"{base}/{name}")
                if stored != expected:
                    raise ChecksumError(f"{base}/{name}: uploaded sha256 {stored} != local {expected}")
            record = {"version": version, "model": self.name, "files": checksums, **metadata}
            self.store.put_json(f"{base}/version.json", record)
        except Exception:
            self._remove_partial(base, list(checksums))
            raise
        return record

    def _remove_partial(self, base: str, names: list[str]) -> None:
        """After a failed upload (a full disk, a lost connection), remove what was put, so a
        re-run leaves no incomplete version folder behind; what cannot be removed now is
        left to ``histo store gc``, which removes incomplete versions older than a day."""
        for name in [*names, "version.json"]:
            try:
                self.store.delete(f"{base}/{name}")
            except Exception as exc:  # noqa: BLE001 - the upload's own error is the one to report
                log.warning("could not remove %s/%s after a failed upload: %s", base, name, exc)

    def version(self, version: str) -> dict[str, Any]:
        record = self.store.get_json(f"{self.prefix}/versions/{check_version_id(version)}/version.json")
        if record is None:
            raise RegistryStateError(f"{self.name} has no complete version {version!r} in {self.store.uri}; "
                                     "histo models list shows the versions")
        return record

    def versions(self) -> list[str]:
        keys = self.store.list(f"{self.prefix}/versions")
        return sorted({k.split("/")[3] for k in keys if k.endswith("/version.json")})

    def champion(self) -> Champion | None:
        record, etag = self.store.get_json_with_etag(f"{self.prefix}/champion.json")
        return Champion(record["version"], record, etag) if record else None

    def verify(self, version: str) -> list[str]:
        """Why ``version`` cannot serve; empty when it can. Fetches its weights, checks them
        against the recorded SHA-256 and, with ``weights_check``, loads them."""
        try:
            record = self.version(version)
        except (RegistryStateError, CorruptObjectError) as exc:
            return [str(exc)]
        if WEIGHTS not in record.get("files", {}):
            return [f"its version.json lists no {WEIGHTS}"]
        with tempfile.TemporaryDirectory(prefix="histo-verify-") as tmp:
            try:
                path = self.download_weights(version, Path(tmp) / WEIGHTS)
                if self.weights_check is not None:
                    self.weights_check(path)
            except (StoreError, ValueError) as exc:  # ChecksumError, "no such object", CheckpointError
                return [str(exc).replace(tmp, "<download>")]
            except Exception as exc:  # noqa: BLE001 - a hostile file makes a loader raise anything
                return [f"its weights do not load: {type(exc).__name__}: {str(exc)[:200]}"]
        return []

    def require_servable(self, version: str) -> None:
        """Raise ``UnservableVersionError`` with the reasons unless ``version`` can serve."""
        self.version(version)  # an unknown or malformed id is a question, not a broken version
        problems = self.verify(version)
        if problems:
            raise UnservableVersionError(f"{self.name} {version} cannot serve: {'; '.join(problems)}; the champion "
                                         "was not moved (histo models verify checks every version)")

    def set_champion(self, version: str, expected: Champion | None, event: str = "manual-promotion",
                     **details: Any) -> None:
        """Point the champion at ``version`` unless someone moved it since ``expected`` was read.

        The version is verified first (``require_servable``), and the ``event`` is filed
        before the pointer moves, so a store that fails in between leaves no move or a
        complete audit trail; the pointer itself records ``details`` (atomic with the move).
        The pointer keeps the chain of earlier champions, so ``rollback`` knows where to go.
        Promoting the current champion is refused: it would put it in its own chain.
        """
        if expected is not None and expected.version == version:
            raise RegistryStateError(f"{self.name}: {version} is already the champion; nothing to change")
        self.require_servable(version)
        history = [*expected.record.get("history", []), expected.version] if expected else []
        self.record_event(event, version, {"previous_champion": expected and expected.version, **details})
        self._write_pointer(version, expected, history, **details)

    def repair_champion(self, version: str, corrupt: CorruptObjectError) -> None:
        """Replace an unreadable ``champion.json`` with a pointer to ``version``.

        Conditional on the corrupt object's ETag, so a concurrent repair or promotion wins
        or loses cleanly; the chain of earlier champions was in the lost object, so
        rollback starts afresh from here."""
        self.require_servable(version)
        self.record_event("repair", version, {"replaced": str(corrupt)})
        self._write_pointer(version, Champion("(unreadable)", {}, corrupt.etag), [], repaired=str(corrupt))

    def rollback(self) -> tuple[str, str]:
        """Re-point the champion to the latest earlier one that can serve; returns (from, to).

        Earlier champions that cannot serve (``verify``) are passed over and named in the
        event. Entries of the chain equal to the current champion (left by older versions
        of this code, which re-promoted a champion onto itself) are skipped: a rollback
        always moves to another version."""
        current = self.champion()
        history = [v for v in (current.record.get("history", []) if current else []) if v != current.version]
        if not history:
            raise RegistryStateError(f"{self.name}: no earlier champion to roll back to")
        passed_over: dict[str, str] = {}
        while history:
            *history, previous = history
            problems = self.verify(previous)
            if not problems:
                break
            passed_over[previous] = "; ".join(problems)
            log.warning("rollback: passing over %s, which cannot serve: %s", previous, passed_over[previous])
        else:
            raise UnservableVersionError(f"{self.name}: no earlier champion can serve; passed over: "
                                         + "; ".join(f"{v}: {why}" for v, why in passed_over.items()))
        details = {"rolled_back_from": current.version, **({"passed_over": passed_over} if passed_over else {})}
        self.record_event("rollback", previous, details)
        self._write_pointer(previous, current, history, **details)
        return current.version, previous

    def _write_pointer(self, version: str, expected: Champion | None, history: list[str], **details: Any) -> None:
        record = self.version(version)  # refuses incomplete versions and ids that are not ids
        pointer = {"version": version, "sha256": record["files"][WEIGHTS], "since": _now(),
                   "history": history, **details}
        try:
            self.store.put_json_if(f"{self.prefix}/champion.json", pointer, expected.etag if expected else None)
        except ConflictError as exc:
            raise ConflictError(f"champion changed underneath this run; not moving it to {version}: {exc}") from exc

    def record_event(self, kind: str, version: str, payload: dict[str, Any]) -> str:
        key = f"{self.prefix}/events/{_now()}-{kind}-{version}.json"
        self.store.put_json(key, {"kind": kind, "version": version, **payload})
        return key

    def fetch_weights(self, folder: Path | str, version: str | None = None) -> tuple[str, Path]:
        """``model.pt`` of ``version`` (default: the champion) into ``folder``, verified;
        returns the version and the file. Raises ``RegistryStateError`` when no version is
        named and there is no champion."""
        if version is None:
            champion = self.champion()
            if champion is None:
                raise RegistryStateError(f"{self.name} has no champion in {self.store.uri}: train and promote "
                                         "one first (histo retrain), or name a version")
            version = champion.version
        return version, self.download_weights(version, Path(folder) / WEIGHTS)

    def events(self) -> list[dict[str, Any]]:
        """Every recorded event, oldest first, each with its ``time`` (UTC, from its key)."""
        keys = self.store.list(f"{self.prefix}/events")
        return [{"time": Path(key).name.split("-", 1)[0], **(self.store.get_json(key) or {})} for key in sorted(keys)]

    def statuses(self, champion: Champion | None, records: dict[str, dict[str, Any] | None]) -> dict[str, str]:
        """Each version's status now, from its record (None: unreadable): champion, rolled
        back, superseded (was champion, or promoted and since replaced), or its run's
        outcome (rejected, conflict)."""
        rolled_back = {e.get("rolled_back_from") for e in self.events() if e.get("kind") == "rollback"}
        former = set(champion.record.get("history", [])) if champion else set()
        statuses = {}
        for version, record in records.items():
            if champion and version == champion.version:
                statuses[version] = "champion"
            elif version in rolled_back:
                statuses[version] = "rolled back"
            elif version in former:
                statuses[version] = "superseded"
            else:
                outcome = "unreadable" if record is None else record.get("decision", {}).get("outcome", "filed")
                statuses[version] = "superseded" if outcome == "promoted" else outcome
        return statuses

    def download_weights(self, version: str, local: Path | str) -> Path:
        """Fetch ``model.pt`` of ``version`` and verify it against the recorded sha256."""
        expected = self.version(version)["files"][WEIGHTS]
        path = self.store.get_file(f"{self.prefix}/versions/{version}/{WEIGHTS}", local)
        actual = sha256_file(path)
        if actual != expected:
            path.unlink()
            raise ChecksumError(f"{self.name} {version}: weights sha256 {actual} != recorded {expected}; "
                                "the stored file is corrupt and was not loaded")
        return path


def _loads_as_recorded(path: Path) -> None:
    from histo_core.checkpoint import check_loadable  # torch: imported when a version is checked

    check_loadable(path)


def open_registry(store: Any, name: str) -> Registry:
    """The registry the pipeline uses: ``store`` a URI or ``StoreConfig``, every version
    checked to load as its recorded architecture before the champion pointer names it."""
    from histo_core.storage import open_store

    return Registry(open_store(store), name, weights_check=_loads_as_recorded)
