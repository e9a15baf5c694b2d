"""``configurator bands``: regenerate the error-band data and print its leave-one-out coverage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from configurator.cli_options import JsonOpt, console
from configurator.errors import InputError


def register(app: typer.Typer) -> None:
    @app.command()
    def bands(
        runs: Annotated[Path, typer.Option("--runs", help="Runs CSV with measured throughput and memory (INTERFACE.md columns).")],
        out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the error bands (default: profiles/error_bands.json).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
        folds: Annotated[Optional[Path], typer.Option("--folds", help="Reuse the leave-one-publisher-out fold constants of an earlier error_bands.json instead of refitting (minutes).")] = None,
        workers: Annotated[int, typer.Option("--workers", help="Processes for the fold refits.")] = 2,
        as_json: JsonOpt = False,
    ) -> None:
        """Rebuild the prediction error bands from out-of-sample residuals (profiles/error_bands.json)."""
        from configurator.build_bands import build, read_folds, write
        from configurator.uncertainty import error_bands_path

        target = out or error_bands_path()
        if target.exists() and not force:
            raise InputError("out", str(target), "exists; pass --force to overwrite")
        if not runs.exists():
            raise InputError("runs", str(runs), "file not found")
        if folds is not None and not folds.exists():
            raise InputError("folds", str(folds), "file not found")
        if workers < 1:
            raise InputError("workers", workers, "must be >= 1")
        try:
            reused = read_folds(folds) if folds is not None else None
        except (KeyError, json.JSONDecodeError):
            raise InputError("folds", str(folds), "holds no fold constants (time.fold_constants)") from None
        say = (lambda msg: None) if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
        data = build(runs, folds=reused, workers=workers, progress=say)
        write(data, target)
        summary = {k: {"rows": len(data[k]["rows"]), "lambda": data[k]["lambda"],
                       "coverage_pct": data[k]["coverage_loo"]["coverage_pct"]} for k in ("time", "memory")}
        if as_json:
            print(json.dumps({"out": str(target), **summary}, indent=2))
            return
        table = Table(title=f"Error bands -> {target} (leave-one-out coverage of p10-p90; target 75-85%)")
        for col in ("quantity", "rows", "kernel weight", "inside p10-p90"):
            table.add_column(col, justify="left" if col == "quantity" else "right")
        for k, v in summary.items():
            table.add_row(k, str(v["rows"]), f"{v['lambda']:g}", f"{v['coverage_pct']:.1f}%")
        console.print(table)


__all__ = ["register"]
