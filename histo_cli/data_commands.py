"""``histo data``: make sample data, validate a data root, list and readmit batches,
download PCam."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from histo_cli.checks import OK, add_store_arguments, require_dir, store_config
from histo_cli.options import add_config_file_options, add_config_options, print_config, resolve_config
from histo_cli.progress import ProgressBar
from histo_core.atomic import atomic_write
from histo_core.config import ValidationConfig


def register(sub: argparse._SubParsersAction) -> None:
    """histo data synth|validate|batches|readmit|download"""
    data = sub.add_parser("data", help="data utilities").add_subparsers(dest="data_command", required=True)
    synth = data.add_parser("synth", help="write generated H&E-like patches in the Kaggle layout")
    synth.add_argument("dest", type=Path, help="folder to write train/ and train_labels.csv into")
    synth.add_argument("--count", type=int, default=2000, help="patches to write (default: %(default)s)")
    synth.add_argument("--seed", type=int, default=0,
                       help="the same seed writes the same patches (default: %(default)s)")
    synth.set_defaults(func=cmd_synth)

    check = data.add_parser("validate", help="validate a data root (exit 0: passed, 1: rejected)",
                            description="Validate a data root as a retrain does. The rules are ValidationConfig's "
                                        "fields; --config reads a retrain YAML's validation section.")
    check.add_argument("data", help="data root in any supported layout")
    check.add_argument("--report", type=Path, help="write the JSON report (every row, the verdict) here")
    check.add_argument("--docs", type=Path, help="write Great Expectations Data Docs (HTML) into this folder")
    check.add_argument("--show", type=int, default=20, help="print at most this many problem rows "
                                                             "(default: %(default)s)")
    add_config_file_options(check)
    add_config_options(check, ValidationConfig)
    check.set_defaults(func=cmd_validate)

    batches = data.add_parser("batches", help="each batch's verdict (accepted, rejected, readmitted) in the store",
                              description="List the verdicts a retrain recorded for the batches of DATA, oldest "
                                          "first, with the reasons of each rejection.")
    readmit = data.add_parser("readmit", help="accept a rejected batch as it is from the next retrain on",
                              description="Record that an operator accepts BATCH as it is: the next retrain "
                                          "includes it (its quarantined rows stay out). A corrected batch is "
                                          "better uploaded under a new batch id.")
    for p in (batches, readmit):
        p.add_argument("data", help="the data root, exactly as the retrain is given it (a folder or s3:// URI)")
        add_store_arguments(p)
        p.set_defaults(func=cmd_batches)
    batches.add_argument("--json", action="store_true", help="print the verdict records as JSON")
    readmit.add_argument("batch", help="the batch id (the folder name under batches/)")
    readmit.add_argument("--note", required=True, help="why it is readmitted; kept with the verdict")

    fetch = data.add_parser("download", help="download a public data set (resumable, checksum-verified)")
    fetch.add_argument("dataset", choices=["pcam"], help="pcam: PatchCamelyon's HDF5 files from its Zenodo record")
    fetch.add_argument("dest", type=Path, help="folder to download into (an interrupted download resumes there)")
    fetch.add_argument("--splits", nargs="+", default=["train", "valid", "test"], choices=["train", "valid", "test"],
                       help="which splits to fetch (default: all three)")
    fetch.add_argument("--url", help="URL template with {name} (default: the Zenodo record); for mirrors")
    fetch.set_defaults(func=cmd_download)


def cmd_synth(args: argparse.Namespace) -> int:
    from histo_core.data.synthetic import SyntheticSpec, write_kaggle_layout

    start = time.perf_counter()
    write_kaggle_layout(args.dest, SyntheticSpec(count=args.count, seed=args.seed))
    print(f"wrote {args.count} patches to {args.dest} in {time.perf_counter() - start:.1f}s")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0 when the data set passes (quarantined rows allowed), 1 when it is stopped."""
    import json

    cfg = resolve_config(ValidationConfig, args, section="validation")
    if args.print_config:
        print_config({"validation": cfg})
        return OK
    require_dir(args.data, "data folder")
    from histo_core.data.manifest import build_manifest
    from histo_core.validation import validate_manifest

    bar, faults = ProgressBar("inspecting images"), {}
    try:
        manifest = build_manifest(args.data, progress=bar, faults=faults)
    finally:
        bar.close()
    result = validate_manifest(manifest, cfg, docs_dir=args.docs, batch_faults=faults)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(args.report, lambda tmp: tmp.write_text(json.dumps(result.report(), indent=2) + "\n"))
    print(result.headline())
    for batch, verdict in result.left_out().items():
        print(f"  batch {batch} {verdict['verdict']}: {'; '.join(verdict['reasons'])}")
    for row in result.rows[result.rows["status"] != "ok"].head(args.show).itertuples():
        print(f"  {row.status:<11} {_terminal_safe(str(row.id))}: {row.reason}")
    if result.drift:
        print(f"colour drift of batch {result.drift['batch']}: {result.drift['score']:.2f} SD "
              f"({'WARNING' if result.drift['warning'] else 'ok'}, threshold {result.drift['threshold']})")
    if args.report:
        print(f"report: {args.report}")
    if args.docs:
        print(f"Data Docs: {args.docs / 'index.html'}")
    if not result.passed:
        print("histo: data set rejected: " + "; ".join(result.problems), file=sys.stderr)
        return 1
    return 0


def _terminal_safe(text: str, limit: int = 80) -> str:
    """An id from other people as the terminal shows it: as written when printable, else as
    Python's repr (an escape sequence in an id must not drive the operator's terminal);
    cut to ``limit`` characters as the reasons quote it."""
    shown = text if text.isprintable() else repr(text)
    return shown if len(shown) <= limit else shown[:limit] + "..."


def cmd_batches(args: argparse.Namespace) -> int:
    """List a data root's batch verdicts, or readmit one (``histo data readmit``)."""
    import json

    from histo_core.batch_verdicts import VerdictStore
    from histo_core.storage import open_store

    verdicts = VerdictStore(open_store(store_config(args)), args.data)
    if args.data_command == "readmit":
        record = verdicts.readmit(args.batch, args.note)
        print(f"batch {args.batch} of {args.data}: {record['previous']['verdict']} -> readmitted; the next "
              "retrain includes it")
        return OK
    records = verdicts.all()
    if args.json:
        print(json.dumps(records, indent=2))
        return OK
    if not records:
        print(f"no batch verdicts for {args.data} in {verdicts.store.uri} (a retrain records them)")
    for batch, record in sorted(records.items(), key=lambda item: (item[1].get("decided") or "", item[0])):
        print(f"{record.get('decided', '?'):<26} {record['verdict']:<11} {batch}  {record.get('rows', 0)} rows"
              + (f"  {'; '.join(record['reasons'])}" if record.get("reasons") else ""))
    return OK


def cmd_download(args: argparse.Namespace) -> int:
    from histo_core.data.download import PCAM_URL, download, pcam_resources

    bars: dict[str, object] = {}

    def progress(name: str, done: int, total: int | None) -> None:
        bars.setdefault(name, ProgressBar(name, unit="B"))(done, total)

    try:
        paths = download(pcam_resources(args.splits, url=args.url or PCAM_URL), args.dest, progress)
    finally:
        for bar in bars.values():
            bar.close()
    for path in paths:
        print(f"verified {path}")
    return 0
