"""Plan a build: search every sensor once, cut the AOI into tiles, group tiles into shards.

The plan is data (JSON-serialisable): the flow writes it next to the cube and passes its path and
shard ids between Prefect tasks, never arrays. One :class:`ShardTask` covers up to ``K`` tiles of
ONE period (``pipelines.write``: a cube position holds one tile in one period), and a build with
``P`` periods has ``P`` consecutive runs of shards, so shard ids and cube positions are stable for
the same recipe and sources (a rerun resumes at the first uncommitted shard).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from shapely.geometry import shape

from pipelines.grid import Tile, TileGrid, shards, tiles_for_aoi
from pipelines.search import SearchResult, search_sensor_detailed
from schemas.cube import CodecSpec, CubeLayout, LabelLayout, SensorLayout
from schemas.errors import InvalidInputError, NotFoundError
from schemas.profiles import BandRole, SensorProfile, get_profile
from schemas.recipe import LabelSource, Period, Recipe, SensorConfig, SplitConfig

__all__ = [
    "BuildPlan",
    "SensorPlan",
    "ShardTask",
    "cube_layout",
    "label_layouts",
    "label_resolution",
    "make_plan",
    "sensor_layout",
]

#: Reflectance is stored as int16 x 10000 (negative values after the PB 04.00 offset fit).
_REFLECTANCE_SCALE = 1e-4
#: Backscatter in dB is stored as int16 x 100 (-327.67 .. 327.67 dB).
_DB_SCALE = 1e-2
_INT16_NODATA = -32768


def _data_bands(profile: SensorProfile, names: Sequence[str] | None) -> tuple[str, ...]:
    """Canonical names of the data (non-QA) bands a sensor stores, in recipe order."""
    specs = [profile.band(n) for n in names] if names else list(profile.default_bands())
    return tuple(s.name for s in specs if not s.categorical)


def sensor_layout(cfg: SensorConfig, profile: SensorProfile) -> SensorLayout:
    """Storage of one sensor group: int16 with CF scaling where every band shares a unit.

    Reflectance bands -> int16, scale 1e-4; Sentinel-1 backscatter in dB -> int16, scale 0.01;
    anything else (e.g. surface temperature mixed with reflectance) -> float32, NaN nodata.
    """
    bands = _data_bands(profile, cfg.bands)
    if not bands:
        raise InvalidInputError(
            f"sensor {cfg.id.value} selects no data bands (only QA bands)",
            where="sensors[].bands",
            fix="name at least one reflectance or backscatter band",
        )
    roles = {profile.band(b).role for b in bands}
    n_time = (cfg.temporal.max_scenes or 1) if cfg.temporal.mode.value == "series" else 1
    if roles == {BandRole.REFLECTANCE}:
        return SensorLayout(
            name=cfg.id.value,
            bands=bands,
            resolution_m=cfg.resolution,
            n_time=n_time,
            dtype="int16",
            nodata=_INT16_NODATA,
            scale_factor=_REFLECTANCE_SCALE,
            add_offset=0.0,
            units="1",
        )
    if roles == {BandRole.BACKSCATTER}:
        return SensorLayout(
            name=cfg.id.value,
            bands=bands,
            resolution_m=cfg.resolution,
            n_time=n_time,
            dtype="int16",
            nodata=_INT16_NODATA,
            scale_factor=_DB_SCALE,
            add_offset=0.0,
            units="dB",
        )
    return SensorLayout(
        name=cfg.id.value,
        bands=bands,
        resolution_m=cfg.resolution,
        n_time=n_time,
        dtype="float32",
        nodata=float("nan"),
    )


def label_layouts(recipe: Recipe) -> list[LabelLayout]:
    """One :class:`LabelLayout` per label source; class names come from its reader."""
    from pipelines.labels import open_reader

    resolution = label_resolution(recipe)
    return [
        LabelLayout(
            source=src.name,
            class_names=tuple(open_reader(src).class_names),
            dtype="uint8",
            nodata=255,
            resolution_m=resolution,
        )
        for src in recipe.labels
    ]


def label_resolution(recipe: Recipe) -> float:
    """Label pixel size: the sources' ``resolution``, else the finest sensor resolution."""
    given = {src.resolution for src in recipe.labels if src.resolution is not None}
    return float(given.pop()) if given else float(min(s.resolution for s in recipe.sensors))


def cube_layout(recipe: Recipe) -> CubeLayout:
    """The cube layout a recipe asks for: sensor groups, ``labels`` and ``tiles``."""
    sensors = [sensor_layout(s, _profile(s)) for s in recipe.sensors]
    codec = CodecSpec(
        name=recipe.output.codec.value,
        level=recipe.output.codec_level or (3 if recipe.output.codec.value == "zstd" else 5),
        shuffle="noshuffle" if recipe.output.codec.value == "zstd" else "bitshuffle",
    )
    return CubeLayout.for_recipe_like(
        sensors,
        tile_size_m=float(recipe.grid.tile_size),
        tiles_per_shard=recipe.output.tiles_per_shard,
        codec=codec,
        labels=label_layouts(recipe),
    )


def _profile(cfg: SensorConfig) -> SensorProfile:
    return get_profile(cfg.id, cfg.provider, cfg.collection)


@dataclass(frozen=True)
class SensorPlan:
    """What the build does for one sensor (JSON-serialisable).

    Attributes:
        sensor: Sensor id value (cube group name).
        provider: Provider value of the profile.
        collection: STAC collection searched.
        bands: Data bands stored, canonical names, storage order.
        resolution_m: Pixel size on the tile grid.
        mask: The recipe's mask rules (``MaskRules.model_dump()``).
        temporal_mode: ``best`` | ``composite`` | ``series``.
        max_scenes: Planes kept by ``series`` / scenes used by ``composite`` (None = all).
        min_valid_fraction: Scenes below this valid share in a tile are not used.
        reference: Whether this is the co-registration reference sensor.
        coregister: Whether to estimate (and correct) the shift against the reference.
        items: Every item found for the whole time range, sorted by datetime then id.
        search_summary: One line from the search for the build summary.
    """

    sensor: str
    provider: str
    collection: str
    bands: tuple[str, ...]
    resolution_m: float
    mask: dict[str, Any]
    temporal_mode: str
    max_scenes: int | None
    min_valid_fraction: float
    reference: bool
    coregister: bool
    items: tuple[dict[str, Any], ...] = field(repr=False)
    search_summary: str = ""

    def profile(self) -> SensorProfile:
        """The sensor profile of this plan."""
        from schemas.sensors import Provider, SensorId

        return get_profile(SensorId(self.sensor), Provider(self.provider), self.collection)

    def items_for(self, tile: Tile, period: Period) -> list[dict[str, Any]]:
        """Items acquired in ``period`` whose footprint intersects the tile."""
        footprint = tile.footprint_wgs84()
        out = []
        for item in self.items:
            when = _item_datetime(item)
            if not (period.start <= when < period.end):
                continue
            geom = item.get("geometry")
            if geom is None or shape(geom).intersects(footprint):
                out.append(item)
        return out


@dataclass(frozen=True)
class ShardTask:
    """One unit of parallel work: up to ``K`` tiles of one period at consecutive positions."""

    index: int
    period_id: str
    tile_ids: tuple[str, ...]
    start: int

    @property
    def id(self) -> str:
        """Stable shard id, e.g. ``s00003``."""
        return f"s{self.index:05d}"


@dataclass(frozen=True)
class BuildPlan:
    """Everything a shard task needs, as data.

    ``labels`` are the recipe's label sources (``model_dump(mode="json")``, paths resolved),
    ``label_resolution_m`` their pixel size, ``split`` the recipe's split config and
    ``aoi_bbox`` the AOI's WGS84 bounds.
    """

    recipe_name: str
    recipe_digest: str
    tile_size_m: float
    tiles_per_shard: int
    periods: tuple[tuple[str, str, str], ...]
    sensors: tuple[SensorPlan, ...]
    shards: tuple[ShardTask, ...]
    labels: tuple[dict[str, Any], ...] = ()
    label_resolution_m: float | None = None
    split: dict[str, Any] = field(default_factory=dict)
    aoi_bbox: tuple[float, float, float, float] | None = None

    def label_sources(self) -> list[LabelSource]:
        """The label sources as recipe models."""
        from pipelines.labels import source_from_json

        return [source_from_json(d) for d in self.labels]

    def split_config(self) -> SplitConfig:
        """The split config as a recipe model."""
        return SplitConfig.model_validate(self.split)

    @property
    def n_positions(self) -> int:
        """Length of the tile axis the plan needs."""
        return max((s.start + len(s.tile_ids) for s in self.shards), default=0)

    def period(self, period_id: str) -> Period:
        """The :class:`Period` with this id."""
        for pid, start, end in self.periods:
            if pid == period_id:
                return Period(pid, datetime.fromisoformat(start), datetime.fromisoformat(end))
        raise NotFoundError(f"period {period_id!r} is not in the plan")

    def shard(self, shard_id: str) -> ShardTask:
        """The shard with this id."""
        for s in self.shards:
            if s.id == shard_id:
                return s
        raise NotFoundError(f"shard {shard_id!r} is not in the plan")

    def grid(self) -> TileGrid:
        """The tile grid of the plan."""
        return TileGrid(self.tile_size_m, tuple(s.resolution_m for s in self.sensors))

    def to_json(self) -> str:
        """Deterministic JSON (sorted keys)."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> BuildPlan:
        """Inverse of :meth:`to_json`."""
        raw = json.loads(text)
        sensors = tuple(
            SensorPlan(
                **{
                    **s,
                    "bands": tuple(s["bands"]),
                    "items": tuple(s["items"]),
                }
            )
            for s in raw["sensors"]
        )
        shards_ = tuple(
            ShardTask(s["index"], s["period_id"], tuple(s["tile_ids"]), s["start"])
            for s in raw["shards"]
        )
        return cls(
            recipe_name=raw["recipe_name"],
            recipe_digest=raw["recipe_digest"],
            tile_size_m=raw["tile_size_m"],
            tiles_per_shard=raw["tiles_per_shard"],
            periods=tuple((p[0], p[1], p[2]) for p in raw["periods"]),
            sensors=sensors,
            shards=shards_,
            labels=tuple(raw.get("labels", ())),
            label_resolution_m=raw.get("label_resolution_m"),
            split=raw.get("split", {}),
            aoi_bbox=tuple(raw["aoi_bbox"]) if raw.get("aoi_bbox") else None,
        )


def _item_datetime(item: Mapping[str, Any]) -> datetime:
    props = item.get("properties", {})
    text = props.get("datetime") or props.get("start_datetime")
    if not text:
        raise InvalidInputError("item has no datetime", where=str(item.get("id")))
    when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    return when if when.tzinfo else when.replace(tzinfo=UTC)


Searcher = Callable[..., SearchResult]


def make_plan(
    recipe: Recipe,
    catalog_urls: Mapping[str, str] | None = None,
    *,
    search: Searcher = search_sensor_detailed,
) -> BuildPlan:
    """Search every sensor over the recipe's time range and lay out tiles and shards.

    Args:
        recipe: A validated recipe (paths resolved).
        catalog_urls: Per sensor id, the STAC API URL to use instead of ``catalog`` (the
            served offline archive for ``archive:`` catalogs).
        search: The search function (``pipelines.search.search_sensor_detailed``).

    Returns:
        The plan: sensors with their items, periods, and shards of ``K`` tiles per period.

    Raises:
        NotFoundError: A sensor has no item (message names sensor, AOI and dates).
        InvalidInputError: The AOI is a file (resolve it first) or the grid is invalid.
    """
    aoi = recipe.aoi.to_shape()
    if aoi is None:
        raise InvalidInputError(
            "the AOI is a vector file; load it before planning", where="aoi.path"
        )
    start = datetime.combine(recipe.time.start, time(), tzinfo=UTC)
    end = datetime.combine(recipe.time.end, time(), tzinfo=UTC)
    urls = dict(catalog_urls or {})
    sensor_plans = []
    for cfg in recipe.sensors:
        profile = _profile(cfg)
        result = search(cfg, aoi, start, end, catalog_url=urls.get(cfg.id.value))
        layout = sensor_layout(cfg, profile)
        sensor_plans.append(
            SensorPlan(
                sensor=cfg.id.value,
                provider=cfg.provider.value,
                collection=result.collection,
                bands=layout.bands,
                resolution_m=cfg.resolution,
                mask=cfg.mask.model_dump(mode="json"),
                temporal_mode=cfg.temporal.mode.value,
                max_scenes=cfg.temporal.max_scenes,
                min_valid_fraction=cfg.mask.min_valid_fraction,
                reference=cfg.reference,
                coregister=cfg.coregister,
                items=tuple(result.items),
                search_summary=result.summary(),
            )
        )
    grid = TileGrid(float(recipe.grid.tile_size), tuple(s.resolution for s in recipe.sensors))
    tiles = tiles_for_aoi(aoi, grid)
    k = recipe.output.tiles_per_shard
    periods = recipe.periods()
    tasks: list[ShardTask] = []
    next_index = 0
    for period in periods:
        for sh in shards(tiles, k, first_index=next_index):
            tasks.append(ShardTask(sh.index, period.id, tuple(t.id for t in sh.tiles), sh.start))
        next_index = (tasks[-1].index + 1) if tasks else next_index
    return BuildPlan(
        recipe_name=recipe.name,
        recipe_digest=recipe.digest(),
        tile_size_m=float(recipe.grid.tile_size),
        tiles_per_shard=k,
        periods=tuple((p.id, p.start.isoformat(), p.end.isoformat()) for p in periods),
        sensors=tuple(sensor_plans),
        shards=tuple(tasks),
        labels=tuple(src.model_dump(mode="json") for src in recipe.labels),
        label_resolution_m=label_resolution(recipe) if recipe.labels else None,
        split=recipe.split.model_dump(mode="json"),
        aoi_bbox=tuple(float(v) for v in aoi.bounds),  # type: ignore[arg-type]
    )
