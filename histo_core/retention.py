"""What the store keeps over a season, so a nightly schedule does not grow it without end.

Kept always: the champion, every former champion (rollback may need any of them: the
pointer's chain and every promotion, rollback or repair event), and the newest
``keep_last`` complete versions. Removed: other complete versions, and incomplete version
folders (no ``version.json``: an upload that failed) older than a day, since a run may be
uploading one right now. Run records (``runs/<run-id>/``) older than ``runs_older_than_days``
are removed only when that is given: they are the audit trail, so pruning them is opt-in.
The events and batch verdicts are small and never removed.

A version is removed ``version.json`` first: a version half removed is incomplete, which
nothing serves or promotes, never a version that looks whole and is not.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from histo_core.registry import Registry
from histo_core.storage import Store

FORMER_CHAMPION_EVENTS = {"promoted", "manual-promotion", "rollback", "repair"}
INCOMPLETE_GRACE = dt.timedelta(days=1)


@dataclass(frozen=True)
class Removal:
    what: str  # "version v...", "incomplete version v...", "run <id>"
    why: str
    keys: tuple[str, ...]
    size: int


@dataclass
class GcPlan:
    kept: dict[str, str] = field(default_factory=dict)  # version -> why it stays
    removals: list[Removal] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(r.size for r in self.removals)


def _stamp(text: str, fmt: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc)
    except ValueError:
        return None


def plan_gc(store: Store, registry: Registry, keep_last: int = 5, runs_older_than_days: float | None = None,
            now: dt.datetime | None = None) -> GcPlan:
    """What ``apply_gc`` would remove, and why each kept version stays. Reads only."""
    if keep_last < 1:
        raise ValueError(f"keep_last {keep_last}: keep at least the newest version")
    now = now or dt.datetime.now(dt.timezone.utc)
    plan = GcPlan()
    folders: dict[str, list[tuple[str, int]]] = {}
    for key, size, _ in store.list_objects(f"{registry.prefix}/versions"):
        folders.setdefault(key.split("/")[3], []).append((key, size))
    complete = sorted(v for v, objects in folders.items() if any(k.endswith("/version.json") for k, _ in objects))
    champion = registry.champion()
    if champion is not None:
        plan.kept[champion.version] = "champion"
        for version in champion.record.get("history", []):
            plan.kept.setdefault(version, "former champion")
    for event in registry.events():
        if event.get("kind") in FORMER_CHAMPION_EVENTS and event.get("version"):
            plan.kept.setdefault(event["version"], "former champion")
    for version in complete[-keep_last:]:
        plan.kept.setdefault(version, f"one of the newest {keep_last}")
    for version, objects in sorted(folders.items()):
        keys = tuple(sorted((k for k, _ in objects), key=lambda k: not k.endswith("/version.json")))
        size = sum(s for _, s in objects)
        if version in complete and version not in plan.kept:
            plan.removals.append(Removal(f"version {version}", f"not champion, never champion, older than the "
                                                               f"newest {keep_last}", keys, size))
        elif version not in complete:
            made = _stamp(version, "v%Y%m%dT%H%M%S%fZ")
            if made is not None and now - made > INCOMPLETE_GRACE:
                plan.removals.append(Removal(f"incomplete version {version}", "no version.json (an upload that "
                                             "failed) and older than a day", keys, size))
    if runs_older_than_days is not None:
        plan.removals += _old_runs(store, now - dt.timedelta(days=runs_older_than_days), runs_older_than_days)
    return plan


def _old_runs(store: Store, before: dt.datetime, days: float) -> list[Removal]:
    runs: dict[str, list[tuple[str, int]]] = {}
    for key, size, _ in store.list_objects("runs"):
        runs.setdefault(key.split("/")[1], []).append((key, size))
    removals = []
    for run_id, objects in sorted(runs.items()):
        started = _stamp(run_id[:16], "%Y%m%dT%H%M%SZ")
        if started is not None and started < before:
            removals.append(Removal(f"run {run_id}", f"run record older than {days:g} days",
                                    tuple(k for k, _ in objects), sum(s for _, s in objects)))
    return removals


def apply_gc(store: Store, plan: GcPlan) -> None:
    """Remove what ``plan`` lists, in its order (``version.json`` first within a version)."""
    for removal in plan.removals:
        for key in removal.keys:
            store.delete(key)
