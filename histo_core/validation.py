"""Validation of a manifest with a Great Expectations (GX Core 1.x) suite.

Two kinds of problem, two consequences:

* **row problems** (unreadable file, wrong size or mode, a label that is not 0 or 1,
  an id used twice (the first row is kept; with different labels or pixels, none is),
  an image file labelled by two rows, an id over 256 characters, with a control
  character or one a spreadsheet would run as a formula) quarantine that row with a
  reason, and the run goes on without it;
* **data set problems** (too few rows, one class only, class balance out of bounds,
  too many rows quarantined) stop the run with ``DataValidationError``.

Each row check is one GX expectation over the manifest, so the suite can be read and
extended like any other GX suite; helper columns computed with pandas hold the facts
GX cannot express directly (duplicate-id conflicts). GX is imported lazily: it takes
seconds to import and only this step needs it.
"""

from __future__ import annotations

import html
import logging
import sys
from fractions import Fraction
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from histo_core.batch_verdicts import USABLE, judge
from histo_core.label_audit import Scorer, audit_batches
from histo_core.config import ValidationConfig
from histo_core.data_docs import write_site_index
from histo_core.errors import DependencyError

log = logging.getLogger(__name__)

NEAR_BLANK = 0.9  # blank_fraction above this draws a warning


class DataValidationError(ValueError):
    """The data set as a whole cannot be trained on; the message says why and what to do."""


@dataclass
class ValidationResult:
    """The manifest with ``status`` (ok / warning / quarantined) and ``reason`` per row."""

    rows: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    drift: dict[str, Any] | None = None
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # batch id -> verdict (batch_verdicts)

    def left_out(self) -> dict[str, dict[str, Any]]:
        """The batches whose rows are not in this data set, with their verdicts."""
        return {b: v for b, v in self.batches.items() if v["verdict"] not in USABLE}

    @property
    def passed(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.rows["status"].value_counts().items()}

    def report(self) -> dict[str, Any]:
        """A JSON-ready report listing every row and the data set verdict."""
        usable = self.rows[(self.rows["status"] != "quarantined") & self.rows["labelled"]]
        return {
            "verdict": "passed" if self.passed else "stopped",
            "problems": self.problems,
            "drift": self.drift,
            "counts": self.counts(),
            "batches": self.batches,
            "labels": {str(k): int(v) for k, v in usable["label"].value_counts().sort_index().items()},
            "rows": self.rows[["id", "status", "reason"]].to_dict(orient="records"),
        }

    def headline(self) -> str:
        """The counts in one line: rows by status, and the batches left out."""
        c = self.counts()
        line = (f"{len(self.rows)} rows: {c.get('ok', 0)} ok, {c.get('warning', 0)} with warnings, "
                f"{c.get('quarantined', 0)} quarantined")
        return line + (f"; batches left out: {', '.join(self.left_out())}" if self.left_out() else "")

    def summary(self) -> str:
        """``headline`` and, when the data set is rejected, why."""
        return self.headline() + ("" if self.passed else " -- STOPPED: " + "; ".join(self.problems))


MAX_ID_CHARS = 256  # Kaggle ids are 40 characters, PCam's under 20; a longer id is refused, not stored
FORMULA_ID = r"^[=+\-@]"  # what a spreadsheet runs as a formula (tables.py); tab and CR are control characters
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f]"


def _helper_columns(manifest: pd.DataFrame, known: dict[str, dict[str, Any]] | None = None) -> pd.DataFrame:
    """Add the columns the suite checks that the manifest does not hold directly.

    Ids and files are compared across batches in order of arrival (recorded verdicts
    first, by when they were decided; new batches after them, by id), leaving out the
    batches already left out: a corrected batch uploaded under a new id does not clash
    with the rejected one it replaces."""
    rows = manifest.reset_index(drop=True).copy()
    rows["row"] = rows.index  # a unique key for GX to report failing rows by
    rows["labelled"] = rows["labelled"].astype(bool) if "labelled" in rows else True
    rows["error"] = rows["error"].replace("", None)
    rows["label"] = rows["label"].astype(str).str.strip()
    known = known or {}
    left_out = {b for b, v in known.items() if v.get("verdict") not in USABLE}
    compared = rows[rows["labelled"] & ~rows["batch"].isin(left_out)]
    arrival = compared["batch"].map(lambda b: (known.get(b, {}).get("decided") or "~", b))
    compared = compared.iloc[sorted(range(len(compared)), key=lambda i: arrival.iloc[i])]  # stable
    same_id = compared.groupby("id")
    conflict = (same_id["label"].transform("nunique") > 1) | (same_id["pixel_sha256"].transform("nunique") > 1)
    with_file = compared[compared["path"] != ""]
    rows["id_conflict"] = conflict.reindex(rows.index, fill_value=False)
    rows["id_repeated"] = compared["id"].duplicated().reindex(rows.index, fill_value=False)
    rows["file_repeated"] = with_file["path"].duplicated().reindex(rows.index, fill_value=False)
    rows["near_blank"] = rows["blank_fraction"].fillna(0) > NEAR_BLANK
    return rows


def _great_expectations() -> Any:
    """GX, imported on first use (it takes seconds); an interpreter that cannot import it is
    an environment fault (exit 3, not retried), not a bug: ``python -OO`` or
    PYTHONOPTIMIZE=2 strips the docstrings its altair dependency builds classes from."""
    try:
        import great_expectations
    except Exception as exc:  # noqa: BLE001 - ImportError, or whatever a broken install raises
        hint = (" It needs docstrings, which PYTHONOPTIMIZE=2 (python -OO) strips: unset PYTHONOPTIMIZE "
                "or set it to 1." if sys.flags.optimize >= 2 else " Reinstall the project's dependencies.")
        raise DependencyError(f"great_expectations cannot be imported ({type(exc).__name__}: {exc}).{hint}") from exc
    return great_expectations


def _row_expectations(cfg: ValidationConfig) -> list[tuple[Any, str, str]]:
    """(expectation, consequence, reason template) for each row rule, in reporting order."""
    e = _great_expectations().expectations
    return [
        (e.ExpectColumnValueLengthsToBeBetween(column="id", min_value=1, max_value=MAX_ID_CHARS),
         "quarantined", "id of {id_length} characters; ids are 1 to " + f"{MAX_ID_CHARS}"),
        (e.ExpectColumnValuesToNotMatchRegex(column="id", regex=CONTROL_CHARACTERS),
         "quarantined", "id {id!r} holds a control character (tab, line break, NUL)"),
        (e.ExpectColumnValuesToNotMatchRegex(column="id", regex=FORMULA_ID),
         "quarantined", "id {id!r} starts with '=', '+', '-' or '@', which a spreadsheet runs as a formula"),
        (e.ExpectColumnValuesToBeNull(column="error"), "quarantined", "{error}"),
        (e.ExpectColumnValuesToBeInSet(column="label", value_set=["0", "1"]),
         "quarantined", "label {label!r} is not 0 or 1"),
        (e.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB"]),
         "quarantined", "image mode {mode!r} is not 8-bit RGB"),
        (e.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.image_size, max_value=cfg.image_size),
         "quarantined", "size {width}x{height}, expected " + f"{cfg.image_size}x{cfg.image_size}"),
        (e.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.image_size, max_value=cfg.image_size),
         "quarantined", "size {width}x{height}, expected " + f"{cfg.image_size}x{cfg.image_size}"),
        (e.ExpectColumnValuesToBeInSet(column="id_conflict", value_set=[False]),
         "quarantined", "id {id!r} appears more than once with different labels or pixels"),
        (e.ExpectColumnValuesToBeInSet(column="id_repeated", value_set=[False]),
         "quarantined", "id {id!r} is already in the data set (an earlier row or batch); the first is kept"),
        (e.ExpectColumnValuesToBeInSet(column="file_repeated", value_set=[False]),
         "quarantined", "its image file is already labelled by an earlier row; one file, one row"),
        (e.ExpectColumnValuesToBeInSet(column="near_blank", value_set=[False]),
         "warning", "near-blank patch ({blank_fraction:.0%} glass or black)"),
    ]


def _checkpoint(name: str, expectations: list[Any], rows: pd.DataFrame, docs_dir: Path | None,
                index_columns: list[str]) -> Any:
    """Run ``expectations`` over ``rows`` as one GX checkpoint (ephemeral context); with
    ``docs_dir``, GX renders its Data Docs of the run there."""
    gx = _great_expectations()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (context.data_sources.add_pandas("manifest")
                 .add_dataframe_asset("rows").add_batch_definition_whole_dataframe("all"))
    suite = context.suites.add(gx.ExpectationSuite(name=name))
    for number, expectation in enumerate(expectations):
        expectation.meta = {**(expectation.meta or {}), "histo_rule": number}  # see _by_rule
        suite.add_expectation(expectation)
    definition = context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(site_name="histo", site_config={
            "class_name": "SiteBuilder",
            # GX refuses a relative base_directory without a project root
            "store_backend": {"class_name": "TupleFilesystemStoreBackend",
                              "base_directory": str(Path(docs_dir).resolve())},
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"}})
        actions.append(gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["histo"]))
    checkpoint = context.checkpoints.add(gx.Checkpoint(
        name=name, validation_definitions=[definition], actions=actions,
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns}))
    return next(iter(checkpoint.run(batch_parameters={"dataframe": rows}).run_results.values()))


def run_suite(rows: pd.DataFrame, cfg: ValidationConfig) -> list[tuple[str, str, list[int]]]:
    """Run the row rules; return (consequence, reason template, failing row numbers) per rule."""
    rules = _row_expectations(cfg)
    result = _checkpoint("histo_rows", [e for e, _, _ in rules], rows, None, ["row"])
    outcomes = _by_rule(result)
    failing = []
    for n, (_, consequence, reason) in enumerate(rules):
        index_list = outcomes[n].result.get("unexpected_index_list") or []
        failing.append((consequence, reason, [int(item["row"]) for item in index_list]))
    return failing


def _by_rule(result: Any) -> dict[int, Any]:
    """GX's results keyed by the rule number ``_checkpoint`` gave each expectation: GX
    orders its results its own way (grouped by column), not as the suite lists them."""
    return {int(r.expectation_config.meta["histo_rule"]): r for r in result.results}


def _verdict_expectations(cfg: ValidationConfig, labelled_rows: int) -> list[Any]:
    """The data set rules, stated once, as GX expectations over the judged rows: their
    results are the verdict (``dataset_problems``) and the Data Docs' page. Warnings are
    listed (by id, with their reason) and never fail; quarantined rows fail only beyond
    the limit."""
    e = _great_expectations().expectations
    allowed = int(Fraction(cfg.max_quarantine_fraction).limit_denominator(10**9) * labelled_rows)
    return [
        e.ExpectColumnValuesToNotBeInSet(
            # GX compares the ok share with ``mostly`` in floats: a hair below the exact share keeps
            # "allowed quarantined rows pass, one more fails" exact for any number of rows.
            column="status", value_set=["quarantined"],
            mostly=max(0.0, (labelled_rows - allowed) / max(1, labelled_rows) - 1e-12),
            notes=f"Quarantined rows are left out of training; the run stops above "
                  f"{cfg.max_quarantine_fraction:.2%} of the labelled rows ({allowed} of {labelled_rows})."),
        e.ExpectColumnSumToBeBetween(column="usable", min_value=cfg.min_rows,
                                     notes=f"At least {cfg.min_rows} usable rows to train on."),
        e.ExpectColumnDistinctValuesToContainSet(column="usable_label", value_set=[0, 1],
                                                 notes="Both classes among the usable rows."),
        e.ExpectColumnMeanToBeBetween(column="usable_label", min_value=cfg.min_positive_fraction,
                                      max_value=cfg.max_positive_fraction,
                                      notes="Share of label 1 among the usable rows."),
        e.ExpectColumnValuesToNotBeInSet(column="status", value_set=["warning"], mostly=0.0,
                                         notes="Warnings (near-blank patches, images without a label row) "
                                               "never stop the run; listed for review."),
    ]


def dataset_problems(rows: pd.DataFrame, cfg: ValidationConfig, docs_dir: Path | None = None) -> list[str]:
    """Why the judged ``rows`` cannot be trained on (empty: they can), from the GX results of
    ``_verdict_expectations``; with ``docs_dir``, GX renders its Data Docs of the same run."""
    judged = rows[rows["labelled"]].copy()
    if len(judged) == 0:
        return ["the data set has no rows; check that the labels file lists images"]
    judged["usable"] = (judged["status"] != "quarantined").astype(int)
    judged["usable_label"] = pd.to_numeric(judged["label"], errors="coerce").where(judged["usable"] == 1)
    judged["reason"] = judged["reason"].replace("", "-")
    # GX puts the values it lists into its pages as they are: ids and reasons (which quote
    # labels) come from other people, so the pages get them as escaped text, never markup.
    for column in ("id", "reason"):
        judged[column] = judged[column].map(lambda text: html.escape(str(text)))
    outcome = _checkpoint("histo_data_set", _verdict_expectations(cfg, len(judged)),
                          judged[["id", "status", "reason", "usable", "usable_label"]], docs_dir, ["id", "reason"])
    rules = _by_rule(outcome)
    quarantine, enough, classes, balance = (rules[n] for n in range(4))  # in _verdict_expectations' order
    problems = []
    if not quarantine.success:
        count, total = quarantine.result["unexpected_count"], quarantine.result["element_count"]
        problems.append(f"{count} of {total} rows ({count / total:.2%}) quarantined, above the limit of "
                        f"{cfg.max_quarantine_fraction:.2%}; see the report for each row's reason")
    if not enough.success:
        problems.append(f"only {int(enough.result['observed_value'])} usable rows, fewer than the minimum of "
                        f"{cfg.min_rows}")
    if judged["usable"].any():  # no usable row: the two rules below have nothing to say
        if not classes.success:
            present = sorted(judged.loc[judged["usable"] == 1, "label"].astype(str).unique().tolist())
            problems.append(f"only label {present} present; training needs both 0 and 1")
        elif not balance.success:
            problems.append(f"label 1 is {balance.result['observed_value']:.1%} of usable rows, outside the "
                            f"accepted {cfg.min_positive_fraction:.0%}-{cfg.max_positive_fraction:.0%}")
    return problems


def newest_batch(batches: dict[str, dict[str, Any]]) -> str | None:
    """The batch that arrived last: first judged last (its verdict's time), ties broken by
    id. Arrival, not the alphabet: ``g3`` may land after ``h1``."""
    usable = {b: v for b, v in batches.items() if v["verdict"] in USABLE}
    return max(usable, key=lambda b: (usable[b].get("decided") or "", b)) if usable else None


def colour_drift(rows: pd.DataFrame, threshold: float, newest_id: str | None = None) -> dict[str, Any] | None:
    """Compare the newest batch's mean colour with the other batches' (reference) images.

    The score is the largest per-channel shift of the batch mean, in units of the
    reference's per-image standard deviation; a new scanner or stain batch shows up here
    long before it shows up in the model's AUC. ``newest_id`` is the batch that arrived
    last (``newest_batch``); without it, the last by name.
    """
    usable = rows[(rows["status"] != "quarantined") & rows["labelled"]]
    batches = sorted(b for b in usable["batch"].unique() if b)
    if len(batches) < 2:
        return None
    newest_id = newest_id if newest_id in batches else batches[-1]
    newest = usable["batch"] == newest_id
    channels = ["mean_r", "mean_g", "mean_b"]
    new, ref = usable.loc[newest, channels].astype(float), usable.loc[~newest, channels].astype(float)
    shift = (new.mean() - ref.mean()) / ref.std().clip(lower=1e-6)
    score = float(shift.abs().max())
    return {"batch": newest_id, "reference_images": int(len(ref)), "batch_images": int(len(new)),
            "shift_in_sd": {c[-1]: round(float(v), 3) for c, v in shift.items()},
            "score": round(score, 3), "threshold": threshold, "warning": score > threshold}


QUOTED = ("id", "label", "path", "mode")  # values from other people that reasons and logs quote


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    """A row's values as a reason quotes them: text from other people cut to 80
    characters (our own messages, such as the image's error, stay whole)."""
    shown = {k: (v[:80] + "...") if k in QUOTED and isinstance(v, str) and len(v) > 80 else v
             for k, v in row.items()}
    return shown | {"id_length": len(str(row.get("id", "")))}


def validate_manifest(manifest: pd.DataFrame, cfg: ValidationConfig = ValidationConfig(),
                      docs_dir: Path | None = None, batch_faults: dict[str, list[str]] | None = None,
                      known_verdicts: dict[str, dict[str, Any]] | None = None,
                      scorer: Scorer | None = None) -> ValidationResult:
    """Check every row, then each batch (``batch_verdicts``), then the data set of the
    accepted batches; never raises for bad rows or batches, only marks or leaves them out.

    ``batch_faults``: problems of whole batches found before their rows (an unreadable
    labels file, a refused S3 key); ``known_verdicts``: the verdicts recorded earlier;
    ``scorer``: the champion, for the label audit of new batches (``label_audit``)."""
    rows = _helper_columns(manifest, known_verdicts)
    rows["status"], rows["reason"] = "ok", ""
    labelled = rows[rows["labelled"]]
    if len(labelled):
        for consequence, template, failing in run_suite(labelled, cfg):
            # the first, most basic reason is the one reported
            todo = [i for i in failing if rows.at[i, "status"] != "quarantined"]
            if todo:
                rows.loc[todo, "status"] = consequence
                rows.loc[todo, "reason"] = [template.format(**_shown(r)) for r in rows.loc[todo].to_dict("records")]
    rows.loc[~rows["labelled"], ["status", "reason"]] = ["warning", "image file has no label row; not used"]
    result = ValidationResult(rows.drop(columns=["row", "id_conflict", "id_repeated", "file_repeated", "near_blank"]))
    if batch_faults or (result.rows["batch"] != "").any():
        result.batches = judge(result.rows, batch_faults or {}, known_verdicts or {}, cfg)
        audit_batches(result.batches, result.rows, scorer, cfg)
        for batch, verdict in result.left_out().items():
            log.warning("batch %s %s, left out of the data set: %s", batch, verdict["verdict"],
                        "; ".join(verdict["reasons"]))
        kept = ~result.rows["batch"].isin(list(result.left_out()))
        result.rows = result.rows[kept].reset_index(drop=True)
    docs = docs_dir if result.rows["labelled"].any() else None  # no labelled row: no GX run to render
    result.problems = dataset_problems(result.rows, cfg, docs)
    if docs is not None:
        write_site_index(Path(docs), result)
    result.drift = colour_drift(result.rows, cfg.drift_threshold, newest_batch(result.batches))
    if result.drift and result.drift["warning"]:
        log.warning("colour drift: batch %s is %.2f SD from the reference data (threshold %.2f)",
                    result.drift["batch"], result.drift["score"], cfg.drift_threshold)
    for _, row in result.rows[result.rows["status"] == "quarantined"].head(20).iterrows():
        shown = _shown({"id": row["id"], "path": row["path"] or "no path"})  # one log line each, however odd
        log.warning("quarantined %r (%r): %s", shown["id"], shown["path"], row["reason"])
    return result


def require_passed(result: ValidationResult) -> None:
    """Raise ``DataValidationError`` with every data set problem when validation stopped the run."""
    if not result.passed:
        raise DataValidationError("data set rejected: " + "; ".join(result.problems))
