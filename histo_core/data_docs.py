"""The Data Docs site of one validation, readable with no network.

GX renders its pages with Bootstrap, jQuery, Vega and Font Awesome from five CDNs and
loads its logo from its own web bucket (with a time stamp in the URL). A pathology lab
often reviews data on machines with no internet, and no page about patient-derived
data should call out to third parties when opened. So every page GX writes is rewritten:
the CDN stylesheets and scripts are dropped, a small inline stylesheet covers the
Bootstrap classes the pages use, and the logo comes from the site's own ``static/``.
What is lost is interaction (sortable tables, collapsing sections): everything a
collapsed section holds is shown. GX's ``index.html`` (a table built by scripts) is
replaced by a plain page with the verdict, the counts and every row that is not ok.
"""

from __future__ import annotations

import os
import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from histo_core.validation import ValidationResult

# Tags that load something from another host; <a href> links only navigate and stay.
_REMOTE_STYLESHEET = re.compile(r"<link\b[^>]*\bhref=[\"']https?://[^>]*>\s*", re.IGNORECASE)
_REMOTE_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']https?://.*?</script>\s*", re.IGNORECASE | re.DOTALL)
_REMOTE_IMAGE = re.compile(r"(<img\b[^>]*\bsrc=)[\"']https?://[^\"']*?([\w-]+\.(?:png|svg|gif))[^\"']*[\"']",
                           re.IGNORECASE)
_REMOTE_CSS_URL = re.compile(r"url\(\s*['\"]?https?://[^)]*\)", re.IGNORECASE)

_MARK = "<!-- histo-retrain: made offline -->"
OFFLINE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#212529;line-height:1.5;margin:0}
a{color:#0062cc}.lead{font-size:1.15rem}.h6{font-size:1rem}.rounded{border-radius:.25rem}
.container-fluid{padding:0 1rem}.row{display:flex;flex-wrap:wrap}.col-12,.col-sm-12,.col-xs-12{flex:0 0 100%;
max-width:100%}.col-6{flex:0 0 50%;max-width:50%}
@media(min-width:768px){.col-md-2{flex:0 0 16.67%;max-width:16.67%}.col-md-10{flex:0 0 83.33%;max-width:83.33%}
.d-md-block{display:block!important}.d-md-inline-flex{display:inline-flex!important}}
.d-flex{display:flex}.d-none{display:none}.invisible{visibility:hidden}.float-left{float:left}
.flex-column{flex-direction:column}.align-items-center{align-items:center}.text-center{text-align:center}
.navbar{display:flex;align-items:center;padding:.5rem 1rem;background:#fff}.border-bottom{border-bottom:1px solid #dee2e6}
.sticky-top{position:sticky;top:0;z-index:10}.breadcrumb{display:flex;list-style:none;padding:.5rem 1rem;margin:0}
.breadcrumb-item+.breadcrumb-item::before{content:"/";padding:0 .5rem;color:#6c757d}.bg-light{background:#f8f9fa}
.nav{display:flex;flex-wrap:wrap;list-style:none;padding-left:0}.nav-link{display:block;padding:.25rem .75rem}
.table{border-collapse:collapse;margin:.5rem 0;width:100%}.table td,.table th{border:1px solid #dee2e6;
padding:.25rem .5rem;vertical-align:top;text-align:left}.table-responsive{overflow-x:auto}
.card{border:1px solid #dee2e6;border-radius:.25rem;margin:.5rem 0}.card-header{padding:.5rem 1rem;
background:#f7f7f7;border-bottom:1px solid #dee2e6}.card-body{padding:.5rem 1rem}
.alert{padding:.5rem 1rem;margin:.5rem 0;border:1px solid #d6d8db;border-radius:.25rem;background:#e2e3e5}
.alert-info{background:#d1ecf1;border-color:#bee5eb}.close{display:none}
.badge{display:inline-block;padding:.15em .45em;border-radius:.25rem;background:#6c757d;color:#fff;font-size:85%}
.btn{display:inline-block;padding:.25rem .5rem;border:1px solid #6c757d;border-radius:.25rem;background:#fff}
.text-success{color:#1e7e34}.text-danger{color:#c82333}.text-info{color:#117a8b}.text-warning{color:#b8860b}
.fas{font-style:normal}.fa-check-circle::before{content:"\\2714"}.fa-times-circle::before{content:"\\2716"}
.fa-exclamation-triangle::before{content:"\\26A0"}.fa-question-circle::before{content:"?"}
.fa-comment::before{content:"\\270E"}
"""


def offline_page(page: str, static: str) -> str:
    """``page`` (a GX page's HTML) with no resource from another host; ``static`` is the
    relative URL of the site's ``static/`` folder from the page. Idempotent: a docs folder
    used again holds pages rewritten before."""
    if _MARK in page:
        return page
    page = _REMOTE_STYLESHEET.sub("", page)
    page = _REMOTE_SCRIPT.sub("", page)
    page = _REMOTE_IMAGE.sub(lambda m: f'{m.group(1)}"{static}/images/{m.group(2)}"', page)
    page = _REMOTE_CSS_URL.sub("none", page)
    return page.replace("</head>", f"{_MARK}<style>{OFFLINE_CSS}</style>\n</head>", 1)


def make_site_offline(docs_dir: Path) -> None:
    """Rewrite every HTML page under ``docs_dir`` with ``offline_page``."""
    for page in Path(docs_dir).rglob("*.html"):
        static = Path(os.path.relpath(Path(docs_dir) / "static", page.parent)).as_posix()
        page.write_text(offline_page(page.read_text(encoding="utf-8"), static), encoding="utf-8")


def write_site_index(docs_dir: Path, result: ValidationResult) -> Path:
    """Make GX's pages offline and write ``index.html`` in place of GX's (which builds its
    table with scripts, so it is blank without them): the verdict, the counts, every row
    that is not ok (by id, with its reason) and links to GX's pages."""
    index = docs_dir / "index.html"
    index.unlink(missing_ok=True)
    make_site_offline(docs_dir)
    pages = sorted(p.relative_to(docs_dir).as_posix() for folder in ("validations", "expectations")
                   for p in (docs_dir / folder).rglob("*.html"))
    flagged = result.rows[result.rows["status"] != "ok"]
    verdict = "passed" if result.passed else "stopped"
    rows_html = "".join(f"<tr><td>{escape(str(r.id))}</td><td>{escape(r.status)}</td><td>{escape(str(r.reason))}"
                        "</td></tr>" for r in flagged.itertuples())
    body = (f"<h1>Data set validation: {verdict}</h1>"
            + ("<ul>" + "".join(f"<li>{escape(p)}</li>" for p in result.problems) + "</ul>" if result.problems
               else "<p>Every data set rule holds. Warnings never stop a run; quarantined rows are left out.</p>")
            + f"<p>{escape(result.headline())}</p>"
            + "<p>Great Expectations pages: " + ", ".join(f'<a href="{escape(p)}">{escape(p)}</a>' for p in pages)
            + "</p>"
            + f"<h2>Rows that are not ok ({len(flagged)})</h2>"
            + "<table class='table'><tr><th>id</th><th>status</th><th>reason</th></tr>" + rows_html + "</table>")
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>Validation: {verdict}</title>"
                     f"<style>{OFFLINE_CSS}</style></head><body class='container-fluid'>{body}</body></html>\n")
    return index
