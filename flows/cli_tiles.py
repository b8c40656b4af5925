"""``eoforge tiles search|show|stats|versions``: query a cube's tile catalog (logic: catalog.query).

Every command reads the catalog through :func:`catalog.open_catalog`; a bad argument ends in one
line (what, where, how to fix) and a non-zero exit (2 for bad input, 3 for a missing cube or
tile). ``tiles serve|publish|export-stac`` live in :mod:`flows.cli_tiles_stac` and are
registered at the end of this module when that module is installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from flows._cli_common import console, reports_errors
from schemas.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    from catalog.query import SearchResult, TileCatalog
    from schemas.tile import TileRecord

__all__ = ["app"]

app = typer.Typer(
    help="Search the tile catalog of a cube: filter by place, time, clouds, labels and split.",
    no_args_is_help=True,
)

#: Rows the table format prints when no --limit is given.
TABLE_ROWS = 100


class OutputFormat(StrEnum):
    """Formats of ``tiles search``."""

    table = "table"
    json = "json"
    geojson = "geojson"
    parquet = "parquet"


_Cube = Annotated[Path, typer.Argument(help="Cube folder written by `eoforge build`.")]
_Version = Annotated[
    int | None,
    typer.Option(
        "--version",
        help="Catalog version (1..N, see `eoforge tiles versions`); default: every committed row.",
    ),
]
_Json = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]


def _open(cube: Path, version: int | None) -> TileCatalog:
    from catalog.query import open_catalog

    try:
        return open_catalog(cube, version=version)
    except InvalidInputError as err:
        raise _as_option_error(err) from None


# --- argument parsing ------------------------------------------------------------------------


def _split_commas(values: Iterable[str] | None) -> list[str] | None:
    if not values:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def _float(text: str, where: str, example: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInputError(
            f"{text!r} is not a number", where=where, fix=f"give e.g. {example}"
        ) from None


def _bbox(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise InvalidInputError(
            f"{text!r} is not four numbers",
            where="--bbox",
            fix="give xmin,ymin,xmax,ymax in WGS84 degrees, e.g. --bbox 8.9,47.5,9.1,47.7",
        )
    x0, y0, x1, y1 = (_float(p, "--bbox", "--bbox 8.9,47.5,9.1,47.7") for p in parts)
    return (x0, y0, x1, y1)


def _geojson(text: str | None) -> Any:
    if text is None:
        return None
    path = Path(text)
    source = "--intersects"
    if not text.lstrip().startswith("{"):
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise InvalidInputError(
                f"cannot read the geometry file ({err.strerror})",
                where=str(path),
                fix="give a GeoJSON file or inline GeoJSON",
            ) from None
        source = str(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidInputError(
            f"not JSON ({err.msg} at line {err.lineno})",
            where=source,
            fix='give a GeoJSON geometry, e.g. {"type": "Point", "coordinates": [9, 47.6]}',
        ) from None
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        features = doc.get("features") or []
        if len(features) != 1:
            raise InvalidInputError(
                f"the FeatureCollection has {len(features)} features",
                where=source,
                fix="give one geometry or one Feature",
            )
        doc = features[0]
    return doc


def _threshold(values: Sequence[str] | None, option: str) -> float | dict[str, float] | None:
    if not values:
        return None
    example = f"{option} 0.2 or {option} sentinel-2-l2a=0.2"
    pairs = [v.partition("=") for v in values]
    if len(values) == 1 and not pairs[0][1]:
        return _float(values[0], option, example)
    if not all(sep for _, sep, _ in pairs):
        raise InvalidInputError(
            f"{list(values)} mixes a bare share with SENSOR=share",
            where=option,
            fix=f"give one share for every sensor, or SENSOR=share for each ({example})",
        )
    return {k.strip(): _float(v, option, example) for k, _, v in pairs}


def _fractions(values: Sequence[str] | None) -> dict[str, float] | None:
    if not values:
        return None
    out = {}
    for value in values:
        name, sep, share = value.rpartition("=")
        if not sep or not name:
            raise InvalidInputError(
                f"{value!r} is not CLASS=share",
                where="--min-fraction",
                fix="give e.g. --min-fraction forest=0.3 or --min-fraction corine:forest=0.3",
            )
        out[name] = _float(share, "--min-fraction", "--min-fraction forest=0.3")
    return out


#: Search argument -> the option that sets it (for error messages).
_OPTIONS = {
    "bbox": "--bbox",
    "intersects": "--intersects",
    "datetime": "--datetime",
    "max_cloud": "--max-cloud",
    "min_valid": "--min-valid",
    "sensors": "--sensor",
    "labels_any": "--label-any",
    "labels_all": "--label-all",
    "min_fraction": "--min-fraction",
    "split": "--split",
    "ids": "--id",
    "limit": "--limit",
    "sortby": "--sortby",
    "version": "--version",
}


def _as_option_error(err: InvalidInputError) -> InvalidInputError:
    """The same error, naming the command-line option instead of the Python argument."""
    where = err.where or ""
    name, bracket, rest = where.partition("[")
    if name in _OPTIONS:
        where = _OPTIONS[name] + (f" {rest.rstrip(']')}" if bracket else "")
    return InvalidInputError(err.what, where=where or None, fix=err.fix)


# --- rendering -------------------------------------------------------------------------------


def _iso(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def record_json(record: TileRecord, *, geometry: bool = True) -> dict[str, Any]:
    """A catalog row as plain JSON (datetimes RFC 3339, footprint as a GeoJSON geometry)."""
    doc: dict[str, Any] = {
        "id": record.id,
        "tile_id": record.tile_id,
        "period_id": record.period_id,
        "start_datetime": _iso(record.period_start),
        "end_datetime": _iso(record.period_end),
        "epsg": record.epsg,
        "transform": list(record.transform),
        "proj_bbox": list(record.proj_bbox),
        "bbox": list(record.bbox),
        "cube_position": record.cube_position,
        "shard_id": record.shard_id,
        "split": record.split,
        "sensors": [
            {
                "sensor": s.sensor,
                "datetimes": [_iso(d) for d in s.datetimes],
                "item_ids": list(s.item_ids),
                "cloud_fraction": s.cloud_fraction,
                "valid_fraction": s.valid_fraction,
                "shift_dy_m": s.shift_dy_m,
                "shift_dx_m": s.shift_dx_m,
                "shift_applied": s.shift_applied,
            }
            for s in record.sensors
        ],
        "class_fractions": {k: dict(v) for k, v in record.class_fractions.items()},
        "multilabels": {k: list(v) for k, v in record.multilabels.items()},
        "unlabeled_fractions": dict(record.unlabeled_fractions),
        "label_flags": list(record.label_flags),
    }
    if geometry:
        import shapely
        from shapely.geometry import mapping

        doc["geometry"] = mapping(shapely.from_wkb(record.geometry_wkb))
    return doc


def _feature(record: TileRecord) -> dict[str, Any]:
    props = record_json(record)
    geometry = props.pop("geometry")
    bbox = props.pop("bbox")
    return {
        "type": "Feature",
        "id": record.id,
        "bbox": bbox,
        "geometry": geometry,
        "properties": props,
    }


def _to_json(data: Any) -> str:
    return json.dumps(data, indent=2, default=_default) + "\n"


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def _sensors_cell(record: TileRecord) -> str:
    parts = []
    for s in record.sensors:
        cloud = "" if s.cloud_fraction is None else f" cloud {_pct(s.cloud_fraction)}"
        parts.append(f"{s.sensor}{cloud} valid {_pct(s.valid_fraction)}")
    return "\n".join(parts) or "-"


def _labels_cell(record: TileRecord) -> str:
    lines = [f"{src}: {', '.join(names)}" for src, names in record.multilabels.items() if names]
    return "\n".join(lines) or "-"


def _version_note(cat: TileCatalog) -> str:
    note = "no finished version" if cat.version is None else f"version {cat.version}"
    if cat.pending_parts:
        note += f" + {len(cat.pending_parts)} unfinished part(s)"
    return note


def _results_table(result: SearchResult, records: Sequence[TileRecord]) -> Table:
    table = Table(title=f"{len(result)} tile row(s), {_version_note(result.catalog)}")
    for name in ("id", "period", "split", "position", "sensors", "multi-labels"):
        table.add_column(name, overflow="fold")
    for r in records:
        table.add_row(
            escape(r.id),
            escape(r.period_id),
            escape(r.split or "-"),
            str(r.cube_position),
            escape(_sensors_cell(r)),
            escape(_labels_cell(r)),
        )
    return table


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as err:
        raise InvalidInputError(
            f"cannot write the output ({err.strerror})", where=str(output), fix="choose a path"
        ) from None


# --- commands --------------------------------------------------------------------------------


@app.command("search")
@reports_errors
def search(
    cube: _Cube,
    bbox: Annotated[
        str | None,
        typer.Option("--bbox", help="xmin,ymin,xmax,ymax in WGS84 degrees (exact footprints)."),
    ] = None,
    intersects: Annotated[
        str | None,
        typer.Option("--intersects", help="A GeoJSON geometry: a file, or inline JSON."),
    ] = None,
    datetime_: Annotated[
        str | None,
        typer.Option(
            "--datetime",
            help="RFC 3339 instant, date (2024-06) or interval a/b with '..' for an open end.",
        ),
    ] = None,
    max_cloud: Annotated[
        list[str] | None,
        typer.Option(
            "--max-cloud",
            help="Highest cloud fraction: a share for every sensor (those of --sensor if given), "
            "or SENSOR=share (repeatable).",
        ),
    ] = None,
    min_valid: Annotated[
        list[str] | None,
        typer.Option("--min-valid", help="Lowest valid fraction, like --max-cloud."),
    ] = None,
    sensor: Annotated[
        list[str] | None,
        typer.Option("--sensor", help="Sensor that must have data (repeatable)."),
    ] = None,
    label_any: Annotated[
        list[str] | None,
        typer.Option(
            "--label-any",
            "--label",
            help="Class (or source:class) of which at least one is a multi-label (repeatable).",
        ),
    ] = None,
    label_all: Annotated[
        list[str] | None,
        typer.Option("--label-all", help="Class that must be a multi-label (repeatable)."),
    ] = None,
    min_fraction: Annotated[
        list[str] | None,
        typer.Option("--min-fraction", help="CLASS=share: lowest share of the class (repeatable)."),
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option("--split", help="Split(s): train, val, test (repeatable or a,b)."),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option("--id", help="Tile id or row id (repeatable)."),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=0, help=f"Most rows (table format: {TABLE_ROWS} shown)."),
    ] = None,
    sortby: Annotated[
        str | None,
        typer.Option(
            "--sortby",
            help="Sort field, '-' prefix for descending: cube_position (default), id, tile_id, "
            "start_datetime, end_datetime, cloud:<sensor>, valid:<sensor>...",
        ),
    ] = None,
    version: _Version = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write to this file (needed for parquet).", dir_okay=False
        ),
    ] = None,
) -> None:
    """Find tile rows of CUBE by place, time, clouds, sensors, labels and split."""
    if fmt is OutputFormat.parquet and output is None:
        raise InvalidInputError(
            "parquet output needs a file",
            where="--format parquet",
            fix="add --output tiles.parquet",
        )
    query: dict[str, Any] = {
        "bbox": _bbox(bbox),
        "intersects": _geojson(intersects),
        "datetime": datetime_,
        "max_cloud": _threshold(max_cloud, "--max-cloud"),
        "min_valid": _threshold(min_valid, "--min-valid"),
        "sensors": _split_commas(sensor),
        "labels_any": label_any or None,
        "labels_all": label_all or None,
        "min_fraction": _fractions(min_fraction),
        "split": _split_commas(split),
        "ids": ids or None,
        "limit": limit,
        "sortby": sortby,
    }
    cat = _open(cube, version)
    try:
        result = cat.search(**query)
    except InvalidInputError as err:
        raise _as_option_error(err) from None
    if fmt is OutputFormat.parquet:
        import pyarrow.parquet as pq

        assert output is not None
        try:
            pq.write_table(result.to_arrow(), output, compression="zstd")
        except OSError as err:
            raise InvalidInputError(
                f"cannot write the output ({err})", where=str(output), fix="choose a path"
            ) from None
        console.print(f"wrote {len(result)} row(s) to {escape(str(output))}", highlight=False)
        return
    if fmt is OutputFormat.table:
        records = (result if limit is not None else result.head(TABLE_ROWS)).to_records()
        table = _results_table(result, records)
        if output is not None:
            from rich.console import Console

            with output.open("w", encoding="utf-8") as fh:
                Console(file=fh, width=160).print(table)
            return
        console.print(table)
        if len(result) > len(records):
            console.print(
                f"... {len(result) - len(records)} more; use --limit, or --format json/parquet",
                highlight=False,
            )
        return
    rows = result.to_records()
    if fmt is OutputFormat.json:
        _emit(_to_json([record_json(r) for r in rows]), output)
    else:
        collection = {
            "type": "FeatureCollection",
            "features": [_feature(r) for r in rows],
            "numberMatched": len(result),
        }
        _emit(_to_json(collection), output)


@app.command("show")
@reports_errors
def show(
    cube: _Cube,
    tile_id: Annotated[str, typer.Argument(help="Tile id (every period) or row id.")],
    version: _Version = None,
    json_out: _Json = False,
) -> None:
    """Print every period's row of one tile."""
    cat = _open(cube, version)
    records = cat.search(ids=[tile_id], sortby="start_datetime").to_records()
    if not records:
        raise NotFoundError(
            f"no tile {tile_id!r} in the catalog ({_version_note(cat)})",
            where=str(cube),
            fix="list tile ids with 'eoforge tiles search CUBE --limit 20'",
        )
    if json_out:
        sys.stdout.write(_to_json([record_json(r) for r in records]))
        return
    for r in records:
        table = Table(title=escape(r.id), show_header=False, title_justify="left")
        table.add_column("field", style="bold")
        table.add_column("value", overflow="fold")
        table.add_row(
            "period", f"{escape(r.period_id)}: {_iso(r.period_start)} .. {_iso(r.period_end)}"
        )
        table.add_row("cube position", f"{r.cube_position} (shard {escape(r.shard_id)})")
        table.add_row("split", escape(r.split or "unassigned"))
        table.add_row("crs", f"EPSG:{r.epsg}")
        table.add_row("bbox (WGS84)", ", ".join(f"{v:.6f}" for v in r.bbox))
        for s in r.sensors:
            shift = ""
            if s.shift_dx_m is not None and s.shift_dy_m is not None:
                done = "applied" if s.shift_applied else "not applied"
                shift = f", shift dx {s.shift_dx_m:+.2f} m dy {s.shift_dy_m:+.2f} m ({done})"
            when = ", ".join(_iso(d) for d in s.datetimes)
            cloud = (
                "no cloud mask" if s.cloud_fraction is None else f"cloud {_pct(s.cloud_fraction)}"
            )
            table.add_row(
                escape(s.sensor),
                escape(
                    f"{cloud}, valid {_pct(s.valid_fraction)}{shift}\n{when}\n"
                    f"items: {', '.join(s.item_ids)}"
                ),
            )
        for src, fractions in r.class_fractions.items():
            ranked = sorted(fractions.items(), key=lambda kv: -kv[1])
            text = ", ".join(f"{k} {_pct(v)}" for k, v in ranked) or "-"
            unlabeled = r.unlabeled_fractions.get(src)
            if unlabeled is not None:
                text += f" (unlabelled {_pct(unlabeled)})"
            table.add_row(escape(f"classes: {src}"), escape(text))
        for src, names in r.multilabels.items():
            table.add_row(escape(f"multi-labels: {src}"), escape(", ".join(names) or "-"))
        if r.label_flags:
            table.add_row("flagged", escape(", ".join(r.label_flags)))
        console.print(table)


@app.command("stats")
@reports_errors
def stats(cube: _Cube, version: _Version = None, json_out: _Json = False) -> None:
    """Count rows per split, class (multi-label presence), sensor and period."""
    cat = _open(cube, version)
    data = cat.stats()
    if json_out:
        sys.stdout.write(_to_json(data))
        return
    head = Table(title=f"tile catalog of {escape(str(cube))}", show_header=False)
    head.add_row("version", _version_note(cat))
    head.add_row("rows (tile x period)", str(data["rows"]))
    head.add_row("tiles", str(data["tiles"]))
    console.print(head)
    splits = Table(title="splits")
    splits.add_column("split")
    splits.add_column("rows", justify="right")
    for name, n in data["splits"].items():
        splits.add_row(escape(name), str(n))
    console.print(splits)
    periods = Table(title="periods")
    for col in ("period", "start", "end", "rows"):
        periods.add_column(col, justify="right" if col == "rows" else "left")
    for p in data["periods"]:
        periods.add_row(
            escape(p["period_id"]), p["start_datetime"], p["end_datetime"], str(p["rows"])
        )
    console.print(periods)
    sensors = Table(title="sensors")
    for col in ("sensor", "rows", "mean cloud", "mean valid"):
        sensors.add_column(col, justify="left" if col == "sensor" else "right")
    for name, s in data["sensors"].items():
        sensors.add_row(escape(name), str(s["rows"]), _pct(s["mean_cloud"]), _pct(s["mean_valid"]))
    console.print(sensors)
    for source, counts in data["classes"].items():
        classes = Table(title=f"{escape(source)} multi-labels")
        classes.add_column("class")
        classes.add_column("rows", justify="right")
        for name, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            classes.add_row(escape(name), str(n))
        console.print(classes)


@app.command("versions")
@reports_errors
def versions(cube: _Cube, json_out: _Json = False) -> None:
    """List the catalog's versions (one per finished build run, oldest first)."""
    cat = _open(cube, None)
    found = [v.to_dict() for v in cat.versions()]
    if json_out:
        sys.stdout.write(_to_json({"versions": found, "pending_parts": len(cat.pending_parts)}))
        return
    table = Table(title=f"catalog versions of {escape(str(cube))}")
    for col in ("version", "run", "finished", "parts added", "rows added"):
        table.add_column(col)
    for v in found:
        table.add_row(
            str(v["version"]),
            escape(v["run_id"]),
            v["finished_at"] or "(before versions were recorded)",
            str(v["parts_added"]),
            str(v["rows_added"]),
        )
    console.print(table)
    if cat.pending_parts:
        console.print(
            f"{len(cat.pending_parts)} part(s) of an unfinished run are in the latest rows only",
            highlight=False,
        )


# --- hook: `tiles serve|publish|export-stac` ---------------------------------------------------
# flows/cli_tiles_stac.py (catalog as STAC) adds its commands to this group when it is present.
if importlib.util.find_spec("flows.cli_tiles_stac") is not None:
    importlib.import_module("flows.cli_tiles_stac").register(app)
