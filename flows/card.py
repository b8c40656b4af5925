"""The dataset card: a ``README.md`` written into the cube root at the end of every build.

A plain text template filled from data only (no network): the cube's layout (root attributes),
the recipe, the catalog rows (current row of every id), the build summary (splits, leakage
report), the statistics of :mod:`pipelines.stats` and the catalog version the run becomes.
Written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import zarr

from catalog.versions import load_versions
from catalog.writer import read_records
from pipelines._warp import redact_href
from schemas import __version__
from schemas.cube import CubeLayout
from schemas.licences import label_terms, sensor_terms
from schemas.recipe import Recipe

__all__ = ["CARD_FILE", "LIBRARIES", "card_text", "write_dataset_card"]

#: Name of the card at the cube root.
CARD_FILE = "README.md"

# The card, ``stats.json`` and the catalog folder (which the run log opens before the cube
# exists) are eoforge's own plain files at the cube root; Zarr warns that they are not Zarr
# nodes when it looks over the root. Not news.
warnings.filterwarnings(
    "ignore",
    message=r"Object at (README\.md|stats\.json|catalog) is not recognized as a component of a",
    category=zarr.errors.ZarrUserWarning,
)
#: Libraries whose versions the card records (distribution names).
LIBRARIES: tuple[str, ...] = (
    "numpy",
    "zarr",
    "xarray",
    "rasterio",
    "dask",
    "prefect",
    "pystac-client",
)
#: Most band rows per sensor in the statistics table (the rest are in ``stats.json``).
MAX_BAND_ROWS = 24


def library_versions() -> dict[str, str]:
    """``{distribution: version}`` of eoforge and :data:`LIBRARIES` (``"not installed"``)."""
    out = {"eoforge": __version__}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def current_rows(cube: str | Path) -> list[dict[str, Any]]:
    """The catalog's current rows (one per ``id``: the highest cube position), by position."""
    best: dict[str, dict[str, Any]] = {}
    for row in read_records(cube).to_pylist():
        known = best.get(row["id"])
        if known is None or row["cube_position"] > known["cube_position"]:
            best[row["id"]] = row
    return sorted(best.values(), key=lambda r: r["cube_position"])


def source_items(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """Sensor -> sorted distinct source item ids of ``rows`` (``sensors[].item_ids``)."""
    items: dict[str, set[str]] = {}
    for row in rows:
        for obs in row["sensors"] or ():
            items.setdefault(obs["sensor"], set()).update(i for i in obs["item_ids"] or () if i)
    return {k: sorted(v) for k, v in sorted(items.items())}


def next_catalog_version(cube: str | Path, run_id: str) -> int:
    """The catalog version ``run_id`` is, or becomes when it finishes (the build lock is held)."""
    versions = load_versions(cube)
    for v in versions:
        if v.run_id == run_id:
            return v.number
    return max((v.number for v in versions), default=0) + 1


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _num(value: Any) -> str:
    return "–" if value is None else f"{value:.5g}"


def _bands_text(bands: list[str]) -> str:
    if len(bands) <= 16:
        return ", ".join(bands)
    return f"{len(bands)} bands ({', '.join(bands[:3])} … {bands[-1]})"


def _stats_lines(stats: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    pct = [f"p{q:g}" for q in stats.get("percentiles", ())]
    lines.append(
        "Per band over VALID pixels of the current tiles (all splits), physical values. "
        "Per-split values, class frequencies and valid/cloud-fraction histograms are in "
        "`stats.json`; " + str(stats.get("method", "")) + "."
    )
    for name, sensor in stats.get("sensors", {}).items():
        lines += ["", f"**{name}**", ""]
        header = ["band", "count", "mean", "std", "min", *pct, "max"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        bands = list(sensor["bands"])
        for band in bands[:MAX_BAND_ROWS]:
            s = sensor["splits"]["all"][band]
            cells = [band, str(s["count"]), *(_num(s[k]) for k in ("mean", "std", "min", *pct))]
            lines.append("| " + " | ".join([*cells, _num(s["max"])]) + " |")
        if len(bands) > MAX_BAND_ROWS:
            lines.append(f"\n({len(bands) - MAX_BAND_ROWS} more bands in `stats.json`.)")
    for source, per_split in stats.get("labels", {}).items():
        splits = list(per_split)
        lines += ["", f"**labels/{source}**: pixel fraction per class", ""]
        lines.append("| class | " + " | ".join(splits) + " |")
        lines.append("|---|" + "---|" * len(splits))
        for cls in per_split["all"]["classes"]:
            cells = [f"{per_split[s]['classes'][cls]['fraction']:.4f}" for s in splits]
            lines.append(f"| {cls} | " + " | ".join(cells) + " |")
    return lines


def card_text(
    cube: str | Path,
    *,
    recipe: Recipe,
    summary: Mapping[str, Any],
    stats: Mapping[str, Any],
    run_id: str,
) -> str:
    """The card's Markdown (module docstring); reads the cube's attributes and catalog rows."""
    cube = Path(cube)
    group = zarr.open_group(str(cube), mode="r", use_consolidated=False)
    layout = CubeLayout.from_root_attrs(dict(group.attrs))
    rows = current_rows(cube)
    items = source_items(rows)
    version = next_catalog_version(cube, run_id)
    periods = sorted({r["period_id"] for r in rows})
    tiles = sorted({r["tile_id"] for r in rows})
    kinds = {lab.name: lab.kind for lab in recipe.labels}
    title = f"# {recipe.name}: an eoforge dataset"
    out: list[str] = [title, ""]
    if recipe.description:
        out += [recipe.description.strip(), ""]
    out += [
        f"Catalog version **{version}** (build run `{run_id}`). Written by eoforge "
        f"{__version__} at the end of the build; the next build rewrites it. The run's "
        f"log (JSON lines): [catalog/runs/{run_id}.log.jsonl](catalog/runs/{run_id}.log.jsonl).",
        "",
        "## What it holds",
        "",
        f"- Tiles: **{len(tiles)}** tiles of {layout.tile_size_m:g} m x {layout.tile_size_m:g} m "
        f"on a UTM grid, **{len(rows)}** catalog rows (tile x period), "
        f"{layout.tiles_per_shard} tiles per shard",
        f"- Periods: {', '.join(periods) if periods else 'none'}",
        f"- Size on disk: {_size(_du(cube))} (when this card was written)",
        "",
        "| sensor | bands | resolution | time planes | dtype | scale / offset | units |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in layout.sensors:
        scale = f"{s.scale_factor} / {s.add_offset}" if s.scale_factor is not None else "–"
        out.append(
            f"| {s.name} | {_bands_text(list(s.bands))} | {s.resolution_m:g} m | {s.n_time} | "
            f"{s.dtype} | {scale} | {s.units or '–'} |"
        )
    if layout.labels:
        out += ["", f"Labels ({layout.label_resolution_m:g} m):", ""]
        for lab in layout.labels:
            kind = kinds.get(lab.source, lab.source)
            out.append(
                f"- `labels/{lab.source}` ({kind}): {len(lab.class_names)} classes "
                f"({', '.join(lab.class_names)}); {lab.nodata} = no label"
            )
    out += [
        "",
        "## How it was made",
        "",
        f"- Recipe: `{recipe.name}`, hash (SHA-256 of its canonical JSON) `{recipe.digest()}`",
        "- Software: " + ", ".join(f"{k} {v}" for k, v in library_versions().items()),
        "- Catalogs queried:",
    ]
    for cfg in recipe.sensors:
        where = cfg.catalog if ":" not in cfg.catalog else redact_href(cfg.catalog)
        out.append(f"  - {cfg.id.value}: `{where}`")
    for line in summary.get("searches", []):
        out.append(f"  - search: {line}")
    out += ["", "### Source items", ""]
    out.append("| sensor | source items |")
    out.append("|---|---|")
    for sensor, ids in items.items():
        out.append(f"| {sensor} | {len(ids)} |")
    for sensor, ids in items.items():
        out += ["", f"<details><summary>{sensor}: {len(ids)} source items</summary>", ""]
        out += [f"- `{i}`" for i in ids]
        out += ["", "</details>"]
    out += ["", "## Licences and attribution", ""]
    sensor_names = [s.name for s in layout.sensors]
    for name in sensor_names:
        out.append(f"- {name}: {sensor_terms(name)}")
    for lab in layout.labels:
        kind = kinds.get(lab.source, lab.source)
        out.append(f"- labels/{lab.source}: {label_terms(kind)}")
    if any(cfg.catalog.startswith("archive:") for cfg in recipe.sensors):
        out.append(
            "- Built from eoforge's offline archive (synthetic scenes and labels that mimic the "
            "products above): the terms above describe the real products."
        )
    out += ["", "## Splits and leakage", ""]
    splits = summary.get("splits") or {}
    out.append("- Tiles per split: " + (", ".join(f"{k} {v}" for k, v in splits.items()) or "none"))
    leakage = summary.get("leakage") or {}
    distance = leakage.get("min_test_train_distance_m")
    if leakage:
        out.append(
            "- Nearest test tile to a train tile: "
            + (f"{distance:g} m" if distance is not None else "no test/train pair")
            + f"; test touching train: {leakage.get('test_touching_train')}"
        )
        out += ["", "Leakage report:", "", "```json"]
        out.append(json.dumps(leakage, indent=1, sort_keys=True))
        out.append("```")
    for line in summary.get("warnings", []):
        out.append(f"- warning: {line}")
    out += ["", "## Statistics", ""]
    out += _stats_lines(stats)
    out += [
        "",
        "## How to load it",
        "",
        "```python",
        "from catalog import open_catalog, TileDataset",
        f'rows = open_catalog("{cube}", version={version}).search(split="train")',
        f'dataset = TileDataset("{cube}", query=rows, normalize="cube")',
        "```",
        "",
        "Leave `version` out for the newest rows. Files: `stats.json` (statistics), `catalog/` "
        "(GeoParquet tile catalog, one row per tile and period).",
        "",
    ]
    return "\n".join(out)


def write_dataset_card(
    cube: str | Path,
    *,
    recipe: Recipe,
    summary: Mapping[str, Any],
    stats: Mapping[str, Any],
    run_id: str,
) -> Path:
    """Write :func:`card_text` to ``<cube>/README.md`` atomically; returns its path."""
    text = card_text(cube, recipe=recipe, summary=summary, stats=stats, run_id=run_id)
    final = Path(cube) / CARD_FILE
    fd, tmp = tempfile.mkstemp(prefix=".card-", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        Path(tmp).chmod(0o644)
        Path(tmp).replace(final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final
