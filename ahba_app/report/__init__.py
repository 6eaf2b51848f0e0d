"""Methods text, references and the HTML report of an ahba-app run (no Nipype).

``methods_text`` and ``citation_markdown`` write Markdown from the parameters actually used (and,
when given, the summary of what happened); ``render_report`` builds one self-contained HTML page.
Everything here is a pure function of its inputs: no network, no files written unless asked; the
figures are SVG written by :mod:`ahba_app.report.figures` (no plotting library).
"""

from .methods import (CC0_NOTICE, AtlasDescription, MethodsDocument, ReportParameters, RunSummary,
                      advisories, citation_markdown, describe, load_references, methods_document,
                      methods_text)
from .html import render_report, write_report

__all__ = [
    "CC0_NOTICE", "AtlasDescription", "MethodsDocument", "ReportParameters", "RunSummary",
    "advisories", "citation_markdown", "describe", "load_references", "methods_document",
    "methods_text", "render_report", "write_report",
]
