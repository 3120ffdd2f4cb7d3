"""``histo models`` and ``histo store``: the registry's versions, the champion pointer,
and the retention policy."""

from __future__ import annotations

import datetime as dt
import argparse
import sys
from typing import Any

from histo_cli.checks import ENVIRONMENT, OK, REJECTED, add_store_arguments, store_config
from histo_core.config import RetrainConfig


def register(sub: argparse._SubParsersAction) -> None:
    """histo models ..., histo store gc"""
    models = sub.add_parser("models", help="list, show, promote or roll back model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    for name, text in [("list", "versions, oldest first: date, AUC, status; * marks the champion"),
                       ("events", "every promotion, rejection, rollback and repair, oldest first"),
                       ("show", "one version's record (default: the champion)"),
                       ("promote", "make VERSION the champion (it must pass the checks of verify)"),
                       ("rollback", "re-point the champion to the latest earlier one that can serve"),
                       ("verify", "check that every version can serve: weights present, checksum, loadable "
                                  "(exit 1 when any cannot)")]:
        p = models_sub.add_parser(name, help=text)
        if name in ("show", "promote"):
            p.add_argument("version", nargs="?" if name == "show" else None,
                           help="a version id, as histo models list prints it"
                                + (" (default: the champion)" if name == "show" else ""))
        if name in ("list", "events"):
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
        p.add_argument("--model-name", default=RetrainConfig.model_fields["model_name"].default,
                       help="registry model (default: %(default)s)")
        p.add_argument("--name", dest="model_name", help=argparse.SUPPRESS)  # its old name
        add_store_arguments(p)
        p.set_defaults(func=cmd_models)

    store = sub.add_parser("store", help="store housekeeping").add_subparsers(dest="store_command", required=True)
    gc = store.add_parser("gc", help="remove versions and run records the retention policy does not keep",
                          description="Keep the champion, every former champion and the newest --keep-last "
                                      "versions; remove other versions and failed (incomplete) uploads older "
                                      "than a day; with --runs-older-than, also run records older than that. "
                                      "--dry-run lists what would go and changes nothing.")
    gc.add_argument("--keep-last", type=int, default=5, help="newest versions always kept (default: %(default)s)")
    gc.add_argument("--runs-older-than", type=float, metavar="DAYS",
                    help="also remove run records (runs/<run-id>/) older than DAYS (default: keep them all)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    gc.add_argument("--model-name", default=RetrainConfig.model_fields["model_name"].default,
                    help="registry model (default: %(default)s)")
    add_store_arguments(gc)
    gc.set_defaults(func=cmd_store_gc)


def cmd_models(args: argparse.Namespace) -> int:
    """List, inspect, promote or roll back versions; every pointer move is a conditional write."""
    import json

    from histo_core.registry import RegistryStateError, open_registry
    from histo_core.storage import CorruptObjectError

    registry = open_registry(store_config(args), args.model_name)
    try:
        champion, corrupt = registry.champion(), None
    except CorruptObjectError as exc:  # promote can replace it; nothing else can trust it
        champion, corrupt = None, exc
    if corrupt and args.models_command != "promote":
        print(f"histo: warning: the champion pointer is unreadable: {corrupt}\n"
              f"  repair it by choosing the version to serve: histo models promote VERSION", file=sys.stderr)
        if args.models_command != "list":
            return ENVIRONMENT
    if args.models_command == "list":
        _list_versions(registry, champion, args.json)
        return ENVIRONMENT if corrupt else OK
    if args.models_command == "verify":
        return _verify_versions(registry, champion)
    if args.models_command == "events":
        events = registry.events()
        if args.json:
            print(json.dumps(events, indent=2))
        for event in [] if args.json else events:
            details = {k: v for k, v in event.items() if k not in ("time", "kind", "version")}
            print(f"{_when(event['time'])}  {event['kind']:<17} {event['version']}  {json.dumps(details)}")
        return OK
    if args.models_command == "show":
        if args.version is None and champion is None:
            raise RegistryStateError(f"{args.model_name} has no champion in {registry.store.uri}; name a version "
                                     "(histo models list shows them)")
        print(json.dumps(registry.version(args.version or champion.version), indent=2))
    elif args.models_command in ("promote", "rollback"):
        from histo_core.storage import probe_writable

        probe_writable(registry.store)  # a read-only store is exit 3 before anything is judged
    if args.models_command == "promote":
        if corrupt:
            registry.repair_champion(args.version, corrupt)
            print(f"champion of {args.model_name}: replaced the unreadable pointer with {args.version}")
            return OK
        if champion is not None and champion.version == args.version:
            print(f"{args.version} is already the champion of {args.model_name}; nothing changed")
            return OK
        registry.set_champion(args.version, champion, promoted_by="histo models promote")
        print(f"champion of {args.model_name}: {champion.version if champion else 'none'} -> {args.version}")
    elif args.models_command == "rollback":
        old, new = registry.rollback()
        print(f"champion of {args.model_name} rolled back: {old} -> {new}")
    return OK


def _verify_versions(registry: Any, champion: Any) -> int:
    """Check that every version can serve; exit 1 when any cannot (0: all can)."""
    versions = registry.versions()
    unusable = 0
    for version in versions:
        problems = registry.verify(version)
        unusable += bool(problems)
        mark = "*" if champion and champion.version == version else " "
        print(f"{mark} {version}  " + ("ok" if not problems else "UNUSABLE: " + "; ".join(problems)))
    print(f"{len(versions) - unusable} of {len(versions)} versions of {registry.name} can serve"
          + (" (* the champion)" if champion else "; no champion"))
    if champion and champion.version not in versions:
        print(f"histo: the champion pointer names {champion.version}, which is not a complete version",
              file=sys.stderr)
        return REJECTED
    return REJECTED if unusable else OK


def cmd_store_gc(args: argparse.Namespace) -> int:
    """Apply the retention policy (histo_core.retention); --dry-run only lists."""
    from histo_core.registry import open_registry
    from histo_core.retention import apply_gc, plan_gc

    if args.keep_last < 1 or (args.runs_older_than is not None and args.runs_older_than < 0):
        raise ValueError("--keep-last must be at least 1 and --runs-older-than not negative")
    config = store_config(args)
    registry = open_registry(config, args.model_name)
    plan = plan_gc(registry.store, registry, args.keep_last, args.runs_older_than)
    for version, why in sorted(plan.kept.items()):
        print(f"keep    {version}  ({why})")
    verb = "would remove" if args.dry_run else "remove"
    for removal in plan.removals:
        print(f"{verb}  {removal.what}  {removal.size / 2**20:.1f} MiB  ({removal.why})")
    if not args.dry_run:
        apply_gc(registry.store, plan)
    print(f"{len(plan.removals)} item(s), {plan.size / 2**20:.1f} MiB {'would be ' if args.dry_run else ''}removed "
          f"from {config.uri}; {len(plan.kept)} version(s) kept")
    return OK


def _when(version_or_time: str) -> str:
    """``v20261126T130501123456Z`` -> ``2026-11-26 13:05:01 UTC``."""
    stamp = dt.datetime.strptime(version_or_time.lstrip("v")[:15], "%Y%m%dT%H%M%S")
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _list_versions(registry: Any, champion: Any, as_json: bool) -> None:
    """Versions, oldest first: date, AUC, status; * marks the champion."""
    import json

    from histo_core.storage import CorruptObjectError

    records, errors = {}, {}
    for version in registry.versions():  # each version.json read once
        try:
            records[version] = registry.version(version)
        except CorruptObjectError as exc:
            records[version], errors[version] = None, str(exc)
    statuses = registry.statuses(champion, records)
    rows = [{"version": v, "status": "unreadable", "error": errors[v]} if r is None else
            {"version": v, "created": _when(v), "auc": r.get("metrics", {}).get("auc"), "status": statuses[v],
             "champion": bool(champion and champion.version == v)} for v, r in records.items()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print(f"no versions of {registry.name} in {registry.store.uri}")
    for row in rows:
        if row["status"] == "unreadable":
            print(f"! {row['version']}  UNREADABLE: {row['error']}")
            continue
        auc = "—" if row["auc"] is None else f"{row['auc']:.4f}"
        print(f"{'*' if row['champion'] else ' '} {row['version']}  {row['created']}  AUC {auc}  {row['status']}")
