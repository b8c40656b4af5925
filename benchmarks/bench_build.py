"""The build: tiles/s of the shard work vs. the decode ceiling and a naive rioxarray loop; memory.

On the ``tiny`` offline archive (generated into a temporary folder once per run), a recipe
restricted to Sentinel-2 + Landsat (EnMAP and Sentinel-1 left out to keep the run short) is
planned once through the served STAC API; then, side by side in this process (repeats
interleaved round-robin, so load on this shared 2-core machine hits every case alike):

* ``eoforge``: :func:`pipelines.shard.build_shard` over every shard of the plan plus
  :func:`pipelines.write.write_shard` into a temporary cube (what one shard task does, minus the
  catalog commit), hrefs rewritten to the archive's local files;
* ``ceiling``: rasterio window reads of the same source pixels (every data and mask band of
  every scene the build uses on every tile, the window under the tile, no warp, no masking), each
  file opened once per shard, single-threaded: the cost of reading and decoding the sources;
* ``naive``: a straightforward per-tile loop, for each tile, sensor, scene and band
  ``rioxarray.open_rasterio(href).rio.reproject(tile grid)``, scale/offset, the SCL / QA_PIXEL +
  QA_RADSAT mask with numpy (no dilation), then the clearest scene of the period;
* ``eoforge over HTTP``: the eoforge case reading the COGs through the archive's range server
  (what a real build does), compared with the local eoforge case.

All four read the same data; the first three through the same local paths, so their ratios
compare processing. Throughput is tile-periods per second; ``src_Mpx_s`` counts the source
pixels the build needs (the per-band, per-scene windows under each tile, clipped to the scene)
per second of the case.

Memory: the eoforge case (build_shard + write_shard, every shard in turn, one period) runs in a
fresh subprocess per AOI, for an AOI and for one 2x wider and 2x taller (4x the area); each child
reports its peak RSS (``VmHWM``, imports included). The build keeps one shard in memory at a
time, so the two peaks should match. Full run: the ``demo`` archive (generated, about a minute
or two), the tiny recipe's bbox vs. 4x, the recipe's 8 tiles per shard. ``--quick``: the tiny
archive, a quarter of its recipe bbox vs. the whole bbox, 2 tiles per shard so that both AOIs
span several shards.

Warm-up: every case first runs once untimed on the plan's first shard (imports, thread pools,
GDAL and the page cache), then the timed repeats run round-robin.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rioxarray
import xarray as xr
import yaml
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from benchmarks._harness import Measurement
from pipelines.archive.create import create_archive
from pipelines.archive.plan import PRESETS
from pipelines.archive.serve import serve_archive
from pipelines.grid import Tile
from pipelines.load import DEFAULT_GDAL_ENV, resampling_for
from pipelines.plan import BuildPlan, SensorPlan, cube_layout, make_plan
from pipelines.shard import build_shard, grid_shard
from pipelines.write import open_or_create_cube, write_shard
from schemas.cube import CubeLayout
from schemas.profiles import BandSpec, SensorProfile
from schemas.qa import SCL_DEFAULT_INVALID
from schemas.recipe import Recipe, recipe_from_data

NAME = "build"

#: Sensors of the benchmark recipe (the others would multiply the run time).
SENSORS = ("sentinel-2-l2a", "landsat-c2-l2")
TAG = "S2+Landsat"
#: Landsat QA_PIXEL bits that make a pixel invalid: fill, dilated cloud, cirrus, cloud, shadow.
_QA_PIXEL_INVALID = 0b11111
_REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------
# Recipes and plans
# --------------------------------------------------------------------------------------------


def _recipe(
    root: Path,
    preset: str,
    out: Path,
    *,
    bbox: Sequence[float] | None = None,
    one_period: bool = False,
    tiles_per_shard: int | None = None,
) -> Recipe:
    """The archive's own recipe, restricted to :data:`SENSORS` (and a bbox, one period, K)."""
    doc: dict[str, Any] = yaml.safe_load((root / "recipes" / f"{preset}.yaml").read_text())
    doc["sensors"] = [s for s in doc["sensors"] if s["id"] in SENSORS]
    doc["labels"] = []
    if bbox is not None:
        doc["aoi"] = {"bbox": [float(v) for v in bbox]}
    if one_period:
        start = str(doc["time"]["start"])
        doc["time"]["end"] = f"{start[:5]}{int(start[5:7]) + 1:02d}-01"
    doc["output"]["path"] = str(out)
    if tiles_per_shard is not None:
        doc["output"]["tiles_per_shard"] = tiles_per_shard
    return recipe_from_data(doc, source=f"{preset} benchmark recipe")


def _plan(recipe: Recipe, stac_url: str) -> BuildPlan:
    return make_plan(recipe, {s.id.value: stac_url for s in recipe.sensors})


def _localise(plan: BuildPlan, data_url: str, root: Path) -> BuildPlan:
    """The plan with every served href (``<data_url>/data/...``) rewritten to the local file."""
    prefix = data_url.rstrip("/") + "/"

    def item(doc: Mapping[str, Any]) -> dict[str, Any]:
        assets = {}
        for key, asset in doc.get("assets", {}).items():
            href = str(asset.get("href", ""))
            if href.startswith(prefix):
                asset = {**asset, "href": str(root / href[len(prefix) :])}
            assets[key] = asset
        return {**doc, "assets": assets}

    sensors = tuple(replace(sp, items=tuple(item(it) for it in sp.items)) for sp in plan.sensors)
    return replace(plan, sensors=sensors)


def _tiles(plan: BuildPlan) -> int:
    return sum(len(task.tile_ids) for task in plan.shards)


def _bands(sp: SensorPlan) -> tuple[SensorProfile, list[BandSpec], list[BandSpec]]:
    """Profile, data bands and mask bands the loader reads for one sensor."""
    profile = sp.profile()
    data = [profile.band(name) for name in sp.bands]
    return profile, [b for b in data if not b.categorical], list(profile.mask_bands())


def _each_tile(plan: BuildPlan) -> Iterator[tuple[int, Tile, SensorPlan, list[dict[str, Any]]]]:
    """``(shard index, tile, sensor plan, items)`` for every tile, sensor and period."""
    for task in plan.shards:
        period = plan.period(task.period_id)
        for tile in grid_shard(plan, task).tiles:
            for sp in plan.sensors:
                yield task.index, tile, sp, sp.items_for(tile, period)


# --------------------------------------------------------------------------------------------
# The three ways of doing the work
# --------------------------------------------------------------------------------------------


@dataclass
class _Cube:
    """A temporary cube the eoforge case writes into (positions are overwritten each repeat)."""

    path: Path
    layout: CubeLayout
    write_s: list[float]


def _eoforge(plan: BuildPlan, cube: _Cube) -> None:
    """What the shard tasks do: build_shard + write_shard for every shard, in turn."""
    group = open_or_create_cube(cube.path, cube.layout, n_tiles_capacity=plan.n_positions)
    write_s = 0.0
    for task in plan.shards:
        built = build_shard(plan, task)
        t0 = time.perf_counter()
        write_shard(group, cube.layout, built.shard, built.results, period_id=task.period_id)
        write_s += time.perf_counter() - t0
    cube.write_s.append(write_s)


def _tile_window(ds: Any, tile: Tile) -> Window | None:
    """The source window under the tile, rounded out and clipped to the raster (no margin)."""
    bounds = tile.bounds
    tile_crs = CRS.from_epsg(tile.epsg)
    if ds.crs != tile_crs:
        bounds = transform_bounds(tile_crs, ds.crs, *bounds, densify_pts=21)
    win = from_bounds(*bounds, transform=ds.transform)
    c0, r0 = max(0, math.floor(win.col_off + 1e-6)), max(0, math.floor(win.row_off + 1e-6))
    c1 = min(ds.width, math.ceil(win.col_off + win.width - 1e-6))
    r1 = min(ds.height, math.ceil(win.row_off + win.height - 1e-6))
    if c1 <= c0 or r1 <= r0:
        return None
    return Window(c0, r0, c1 - c0, r1 - r0)


def _ceiling(plan: BuildPlan, *, read: bool = True) -> int:
    """Read every band window the build needs (each file opened once per shard); source pixels."""
    pixels = 0
    shard = -1
    with rasterio.Env(**DEFAULT_GDAL_ENV), contextlib.ExitStack() as stack:
        opened: dict[str, Any] = {}
        for index, tile, sp, items in _each_tile(plan):
            if index != shard:  # files are opened once per shard
                stack.close()
                opened, shard = {}, index
            _, data, qa = _bands(sp)
            for item in items:
                for spec in (*data, *qa):
                    href = str(item["assets"][spec.asset_key]["href"])
                    ds = opened.get(href)
                    if ds is None:
                        ds = opened[href] = stack.enter_context(rasterio.open(href))
                    win = _tile_window(ds, tile)
                    if win is None:
                        continue
                    pixels += int(win.width * win.height)
                    if read:
                        ds.read(spec.asset_band or 1, window=win)
    return pixels


def _invalid(spec: BandSpec, raw: np.ndarray) -> np.ndarray:
    """The naive mask of one QA layer (NaN = outside the scene)."""
    outside: np.ndarray = np.isnan(raw)
    values = np.where(outside, 0, raw).astype(np.int64)
    if spec.name == "SCL":
        outside |= np.isin(values, sorted(SCL_DEFAULT_INVALID))
    elif spec.name == "QA_PIXEL":
        outside |= (values & _QA_PIXEL_INVALID) != 0
    elif spec.name == "QA_RADSAT":
        outside |= values != 0
    return outside


def _naive_scene(
    item: Mapping[str, Any],
    tile: Tile,
    sp: SensorPlan,
) -> tuple[np.ndarray, np.ndarray]:
    """One scene on one tile the rioxarray way: ``(bands, y, x)`` values and the valid mask."""
    profile, data, qa = _bands(sp)
    res = sp.resolution_m
    crs, transform, shape = CRS.from_epsg(tile.epsg), tile.transform(res), tile.shape(res)

    def warped(spec: BandSpec) -> np.ndarray:
        href = str(item["assets"][spec.asset_key]["href"])
        da = rioxarray.open_rasterio(href, masked=True)
        assert isinstance(da, xr.DataArray)
        with da:
            out = da.rio.reproject(
                crs,
                transform=transform,
                shape=shape,
                resampling=resampling_for(spec, spec.resolution_m, res),
            )
            return np.asarray(out.values[0], dtype=np.float64)

    planes = []
    for spec in data:
        scale, offset = profile.scale_offset_for_item(spec.name, item)
        planes.append((warped(spec) * scale + offset).astype(np.float32))
    values = np.stack(planes)
    valid = np.asarray(np.isfinite(values).all(axis=0))
    for spec in qa:
        valid &= ~_invalid(spec, warped(spec))
    return values, valid


def _naive(plan: BuildPlan) -> int:
    """Per tile, sensor and period: warp every scene with rioxarray, keep the clearest."""
    kept = 0
    for _, tile, sp, items in _each_tile(plan):
        best: tuple[float, np.ndarray] | None = None
        for item in items:
            values, valid = _naive_scene(item, tile, sp)
            frac = float(valid.mean())
            if best is None or frac > best[0]:
                best = (frac, np.where(valid, values, np.nan))
        kept += best is not None
    return kept


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def _vsicurl_cache_clearer() -> Callable[[], None] | None:
    """GDAL's ``VSICurlClearCache`` of the libgdal rasterio uses, or None if it is not found.

    GDAL keeps /vsicurl file headers and ranges for the life of the process, so a repeat would
    read the tiny archive (2 MB) from memory, not through the range server; clearing the cache
    before each HTTP run makes every repeat fetch what a one-pass build fetches. rasterio's wheel
    bundles a private libgdal (pyogrio's is another one), found here in ``/proc/self/maps``.
    """
    libs = set()
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and Path(parts[-1]).name.startswith("libgdal"):
            libs.add(parts[-1])
    chosen = [p for p in libs if "rasterio" in p] or (sorted(libs) if len(libs) == 1 else [])
    if not chosen:
        return None
    fn = ctypes.CDLL(chosen[0]).VSICurlClearCache
    fn.argtypes, fn.restype = [], None
    return fn


def _interleaved(
    fns: Mapping[str, Callable[[bool], object]], repeats: int
) -> dict[str, list[float]]:
    """Wall times of every function, repeats interleaved round-robin.

    Each function takes ``warm``: one untimed call with ``True`` first (imports, thread pools,
    GDAL and the page cache warm up on a small part of the work), then ``repeats`` timed calls.
    """
    for fn in fns.values():
        fn(True)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(False)
            times[name].append(time.perf_counter() - t0)
    return times


def _throughput_cases(root: Path, work: Path, quick: bool) -> list[Measurement]:
    recipe = _recipe(root, "tiny", work / "unused.zarr", one_period=quick)
    layout = cube_layout(recipe)
    scope = f"{TAG}, tiny, {len(recipe.periods())} period(s)"
    with serve_archive(root) as srv:
        plans = {"http": _plan(recipe, srv.stac_url)}
        plans["local"] = _localise(plans["http"], srv.data_url, root)
        warm = {k: replace(v, shards=v.shards[:1]) for k, v in plans.items()}
        local = plans["local"]
        tiles = _tiles(local)
        mpx = _ceiling(local, read=False) / 1e6
        cubes = {k: _Cube(work / f"{k}.zarr", layout, []) for k in plans}

        def pick(w: bool, key: str = "local") -> BuildPlan:
            return warm[key] if w else plans[key]

        clear = _vsicurl_cache_clearer()
        fetched: list[dict[str, int]] = []

        def http(w: bool) -> None:
            if clear is not None:
                clear()
            before = srv.data_stats()
            _eoforge(pick(w, "http"), cubes["http"])
            after = srv.data_stats()
            if not w:
                fetched.append({k: after[k] - before[k] for k in after})

        names = {
            "ceiling": f"ceiling: rasterio window reads ({scope})",
            "eoforge": f"eoforge build_shard+write_shard, local files ({scope})",
            "naive": f"naive rioxarray per-tile loop ({scope})",
            "http": f"eoforge over HTTP range server ({scope})",
        }
        fns: dict[str, Callable[[bool], object]] = {
            "ceiling": lambda w: _ceiling(pick(w)),
            "eoforge": lambda w: _eoforge(pick(w), cubes["local"]),
            "naive": lambda w: _naive(pick(w)),
            "http": http,
        }
        times = _interleaved(fns, repeats=2 if quick else 3)
    med = {k: statistics.median(v) for k, v in times.items()}
    baselines = {
        "ceiling": None,
        "eoforge": names["ceiling"],
        "naive": names["eoforge"],
        "http": names["eoforge"],
    }
    out = []
    for key in ("ceiling", "eoforge", "naive", "http"):
        extra: dict[str, Any] = {
            "src_Mpx_s": round(mpx / med[key], 2),
            "times_s": [round(t, 2) for t in times[key]],
        }
        if key == "ceiling":
            extra.update(src_Mpx=round(mpx, 2), shards=len(local.shards))
        if key == "eoforge":
            extra.update(
                speed_vs_ceiling=f"{med['ceiling'] / med['eoforge']:.3f}x",
                speed_vs_naive=f"{med['naive'] / med['eoforge']:.2f}x",
            )
        if key == "http":
            extra.update(
                vsicurl_cache_cleared=clear is not None,
                requests=int(statistics.median(f["requests"] for f in fetched)),
                MB_fetched=round(statistics.median(f["bytes_sent"] for f in fetched) / 1e6, 2),
            )
        if key in ("eoforge", "http"):
            timed = cubes["local" if key == "eoforge" else "http"].write_s[1:]  # not the warm-up
            extra["write_s"] = round(statistics.median(timed), 2)
        out.append(
            Measurement(
                bench=NAME,
                case=names[key],
                baseline=baselines[key],
                median_s=med[key],
                repeats=len(times[key]),
                unit_count=tiles,
                unit="tiles",
                extra=extra,
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Peak memory vs. AOI size
# --------------------------------------------------------------------------------------------


def _status_mb(key: str) -> float:
    """A ``/proc/self/status`` figure (``VmHWM``, ``VmRSS``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(plan_path: str, recipe_path: str, cube_path: str) -> None:
    """In a fresh process: the eoforge case over a plan; prints peak RSS as one JSON line."""
    rss_import = _status_mb("VmRSS")
    plan = BuildPlan.from_json(Path(plan_path).read_text())
    recipe = recipe_from_data(json.loads(Path(recipe_path).read_text()))
    t0 = time.perf_counter()
    _eoforge(plan, _Cube(Path(cube_path), cube_layout(recipe), []))
    print(
        json.dumps(
            {
                "peak_rss_mb": round(_status_mb("VmHWM"), 1),
                "rss_after_import_mb": round(rss_import, 1),
                "seconds": time.perf_counter() - t0,
                "tiles": _tiles(plan),
                "shards": len(plan.shards),
            }
        )
    )


def _grow(bbox: Sequence[float], factor: float) -> tuple[float, float, float, float]:
    """The bbox scaled about its centre by ``factor`` in each direction."""
    w, s, e, n = bbox
    cx, cy, hw, hh = (w + e) / 2, (s + n) / 2, (e - w) / 2 * factor, (n - s) / 2 * factor
    return (cx - hw, cy - hh, cx + hw, cy + hh)


@dataclass(frozen=True)
class _MemorySetup:
    """Where the memory cases run: an archive preset, the 1x AOI, tiles per shard."""

    preset: str
    small: tuple[float, float, float, float]
    tiles_per_shard: int | None


#: Quick: the tiny archive, a quarter of its recipe bbox vs. the whole bbox, 2 tiles per shard
#: (so both AOIs span several shards). Full: the demo archive, the tiny recipe's bbox vs. a bbox
#: 2x wider and 2x taller, the recipe's 8 tiles per shard.
_MEMORY = {
    True: _MemorySetup("tiny", _grow(PRESETS["tiny"].recipe_bbox, 0.5), 2),
    False: _MemorySetup("demo", PRESETS["tiny"].recipe_bbox, None),
}


def _memory_cases(work: Path, quick: bool) -> list[Measurement]:
    setup = _MEMORY[quick]
    root = work / setup.preset
    created_s = 0.0
    if not root.exists():
        t0 = time.perf_counter()
        create_archive(root, preset=setup.preset, seed=0)
        created_s = time.perf_counter() - t0
    aois = {"1x": setup.small, "4x": _grow(setup.small, 2.0)}
    jobs: dict[str, tuple[Path, Path, str]] = {}
    with serve_archive(root) as srv:
        for label, bbox in aois.items():
            recipe = _recipe(
                root,
                setup.preset,
                work / f"mem-{label}.zarr",
                bbox=bbox,
                one_period=True,
                tiles_per_shard=setup.tiles_per_shard,
            )
            plan = _localise(_plan(recipe, srv.stac_url), srv.data_url, root)
            plan_path, recipe_path = work / f"plan-{label}.json", work / f"recipe-{label}.json"
            plan_path.write_text(plan.to_json())
            recipe_path.write_text(json.dumps(recipe.model_dump(mode="json")))
            jobs[label] = (plan_path, recipe_path, recipe.output.path)
    reports: dict[str, dict[str, Any]] = {}
    for label, (plan_path, recipe_path, cube) in jobs.items():
        argv = [sys.executable, "-m", "benchmarks.bench_build", "--memory-child"]
        proc = subprocess.run(
            [*argv, str(plan_path), str(recipe_path), cube],
            cwd=_REPO,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(_REPO)},
        )
        if proc.returncode != 0:
            raise RuntimeError(f"memory child {label} failed:\n{proc.stderr[-3000:]}")
        reports[label] = json.loads(proc.stdout.strip().splitlines()[-1])
    k = setup.tiles_per_shard or 8
    names = {
        label: f"eoforge peak RSS, AOI {label} ({TAG}, {setup.preset}, 1 period, K={k}, "
        "fresh process)"
        for label in aois
    }
    out = []
    for label, bbox in aois.items():
        rep = reports[label]
        extra: dict[str, Any] = {
            "peak_rss_MiB": rep["peak_rss_mb"],
            "rss_after_import_MiB": rep["rss_after_import_mb"],
            "shards": rep["shards"],
            "bbox": [round(v, 4) for v in bbox],
        }
        if label == "4x":
            ratio = rep["peak_rss_mb"] / reports["1x"]["peak_rss_mb"]
            extra["peak_rss_4x_over_1x"] = round(ratio, 3)
        elif created_s:
            extra["archive_created_s"] = round(created_s, 1)
        out.append(
            Measurement(
                bench=NAME,
                case=names[label],
                baseline=None if label == "1x" else names["1x"],
                median_s=rep["seconds"],
                repeats=1,
                unit_count=rep["tiles"],
                unit="tiles",
                extra=extra,
            )
        )
    return out


def run(quick: bool = False) -> list[Measurement]:
    """Throughput side by side on the tiny archive, then peak RSS per AOI (module docstring).

    ``quick`` builds one monthly period instead of three, times 2 repeats instead of 3 and
    measures memory on the tiny archive (no demo archive to generate).
    """
    with tempfile.TemporaryDirectory(prefix="eoforge-bench-build-") as tmp:
        work = Path(tmp)
        root = work / "tiny"
        create_archive(root, preset="tiny", seed=0)
        results = _throughput_cases(root, work, quick)
        results += _memory_cases(work, quick)
    return results


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--memory-child":
        _memory_child(*sys.argv[2:5])
    else:
        raise SystemExit("usage: python -m benchmarks.bench_build --memory-child PLAN RECIPE CUBE")
