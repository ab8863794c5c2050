"""`cohort model …`: a site exports a run's final model, profiles it, scores with it, serves it.

The commands live in their own modules: ``export`` in :mod:`cli.model_export` (the export
itself in :mod:`cli.site_export`), ``profile`` in :mod:`cli.model_profile`, ``predict`` and
``serve`` in :mod:`cli.serve`; where they find a model and the site's rows in
:mod:`cli.model_source`. The functions other commands and tests call are importable here.
"""

from __future__ import annotations

import typer

from cli.model_export import change_cells, export, export_run, fetch_final_model, report_table
from cli.model_profile import profile
from cli.serve import predict, score_csv, serve
from cli.site_export import export_site_model, load_export_data

__all__ = [
    "app",
    "change_cells",
    "export_run",
    "export_site_model",
    "fetch_final_model",
    "load_export_data",
    "report_table",
    "score_csv",
]

app = typer.Typer(help="Export a run's final model at a site.", no_args_is_help=True)


@app.callback()
def model() -> None:
    """Export a run's final model at a site (INT8 with --int8)."""


app.command("export")(export)
app.command("predict")(predict)
app.command("profile")(profile)
app.command("serve")(serve)
