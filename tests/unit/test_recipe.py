"""Recipe schema: good recipes load, bad ones name the offending field, periods are exact."""

from __future__ import annotations

import copy
import itertools
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.errors import InvalidInputError
from schemas.recipe import (
    SCHEMA_PATH,
    CorineLabels,
    Period,
    PeriodMode,
    Recipe,
    RecipeError,
    TimeRange,
    load_recipe,
    parse_recipe,
    recipe_from_data,
    recipe_json_schema,
    recipe_json_schema_text,
)
from schemas.sensors import Provider, SensorId

REPO = Path(__file__).resolve().parents[2]
RECIPES = sorted((REPO / "recipes").glob("*.yaml"))

BASE = """
name: test-recipe
aoi:
  bbox: [11.9, 47.9, 12.1, 48.0]
time:
  start: 2024-06-01
  end: 2024-09-01
  periods: monthly
sensors:
  - id: sentinel-1-rtc
    catalog: https://planetarycomputer.microsoft.com/api/stac/v1
  - id: sentinel-2-l2a
    catalog: https://planetarycomputer.microsoft.com/api/stac/v1
    bands: [B02, B03, B04, B08]
  - id: landsat-c2-l2
    catalog: archive:data/archive-tiny
    temporal: {mode: series, max_scenes: 3}
grid:
  tile_size: 1200
labels:
  - kind: corine
    path: data/corine.gpkg
    nomenclature: bigearthnet19
  - kind: osm
    path: data/osm.osm
    classes:
      - {name: building, tags: ["building=*"]}
output:
  path: build/test.zarr
"""

_DELETE = object()


def _base() -> dict[str, Any]:
    data = yaml.safe_load(BASE)
    assert isinstance(data, dict)
    return data


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set (or delete, with _DELETE) ``a.b.0.c`` in nested dicts and lists."""
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    key: Any = int(last) if isinstance(node, list) else last
    if value is _DELETE:
        del node[key]
    else:
        node[key] = value


def _parse(changes: dict[str, Any]) -> Recipe:
    data = _base()
    for dotted, value in changes.items():
        _set(data, dotted, value)
    return parse_recipe(yaml.safe_dump(data, sort_keys=False), "bad.yaml")


BOWTIE = {
    "type": "Polygon",
    "coordinates": [[[12, 48], [12.1, 48.1], [12.1, 48], [12, 48.1], [12, 48]]],
}
ACROSS_180 = {
    "type": "Polygon",
    "coordinates": [[[179.5, 10], [-179.5, 10], [-179.5, 11], [179.5, 11], [179.5, 10]]],
}

# (changes to BASE, the field path the message must name, a fragment of the reason)
BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "end-before-start": ({"time.end": date(2024, 5, 1)}, "time.end", "not after start"),
    "end-equals-start": ({"time.end": date(2024, 6, 1)}, "time.end", "not after start"),
    "impossible-date": ({"time.start": "2024-02-30"}, "time.start", "valid date"),
    "unknown-period-mode": ({"time.periods": "weekly"}, "time.periods", "'monthly'"),
    "custom-without-windows": ({"time.periods": "custom"}, "time.custom", "no windows"),
    "custom-overlap": (
        {
            "time.periods": "custom",
            "time.custom": [
                {"start": date(2024, 6, 1), "end": date(2024, 7, 15)},
                {"start": date(2024, 7, 1), "end": date(2024, 8, 1)},
            ],
        },
        "time.custom[1].start",
        "before the previous one ends",
    ),
    "custom-outside-range": (
        {
            "time.periods": "custom",
            "time.custom": [{"start": date(2024, 1, 1), "end": date(2024, 2, 1)}],
        },
        "time.custom[0]",
        "not inside the time range",
    ),
    "resolution-does-not-divide": (
        {"sensors.1.resolution": 35},
        "sensors[1].resolution",
        "does not divide",
    ),
    "resolution-above-tile": (
        {"grid.tile_size": 20, "sensors.2.resolution": 30},
        "sensors[2].resolution",
        "does not divide",
    ),
    "negative-resolution": (
        {"sensors.0.resolution": -10},
        "sensors[0].resolution",
        "greater than 0",
    ),
    "antimeridian-bbox": ({"aoi.bbox": [170.0, 10.0, -170.0, 20.0]}, "aoi.bbox", "antimeridian"),
    "antimeridian-geometry": ({"aoi": {"geometry": ACROSS_180}}, "aoi.geometry", "antimeridian"),
    "empty-bbox": ({"aoi.bbox": [12.0, 48.0, 12.0, 48.5]}, "aoi.bbox", "empty"),
    "latitude-out-of-range": ({"aoi.bbox": [12.0, 48.0, 12.5, 95.0]}, "aoi.bbox", "latitude"),
    "polar-bbox": ({"aoi.bbox": [12.0, 84.5, 12.5, 85.0]}, "aoi.bbox", "UTM range"),
    "bbox-three-numbers": ({"aoi.bbox": [12.0, 48.0, 12.5]}, "aoi.bbox[3]", "too few items"),
    "no-aoi": ({"aoi": {}}, "aoi", "no area given"),
    "two-aois": ({"aoi.path": "area.gpkg"}, "aoi", "bbox and path are both given"),
    "self-intersecting-geometry": ({"aoi": {"geometry": BOWTIE}}, "aoi.geometry", "invalid"),
    "point-geometry": (
        {"aoi": {"geometry": {"type": "Point", "coordinates": [12, 48]}}},
        "aoi.geometry.type",
        "does not match any of the expected tags",
    ),
    "unknown-sensor": ({"sensors.0.id": "sentinel-3-olci"}, "sensors[0].id", "sentinel-2-l2a"),
    "unknown-provider-url": (
        {"sensors.1.catalog": "http://127.0.0.1:8080/stac"},
        "sensors[1].provider",
        "unknown provider",
    ),
    "no-profile-for-pair": (
        {
            "sensors.2.id": "enmap-l2a",
            "sensors.2.catalog": "https://earth-search.aws.element84.com/v1",
        },
        "sensors[2].provider",
        "no profile for sensor 'enmap-l2a' from provider 'earth-search'",
    ),
    "bad-catalog": (
        {"sensors.1.catalog": "ftp://example.org/stac"},
        "sensors[1].catalog",
        "neither",
    ),
    "empty-archive-path": (
        {"sensors.2.catalog": "archive:"},
        "sensors[2].catalog",
        "names no directory",
    ),
    "unknown-provider-name": (
        {"sensors.1.provider": "esa"},
        "sensors[1].provider",
        "'earth-search'",
    ),
    "cloud-cover-above-100": (
        {"sensors.1.max_cloud_cover": 150},
        "sensors[1].max_cloud_cover",
        "less than or equal to 100",
    ),
    "typo-field": (
        {"sensors.1.resolutoin": 10},
        "sensors[1].resolutoin",
        "did you mean 'resolution'",
    ),
    "duplicate-band": (
        {"sensors.1.bands": ["B02", "B03", "B02"]},
        "sensors[1].bands[2]",
        "listed twice",
    ),
    "unknown-band": (
        {"sensors.1.bands": ["B02", "B13"]},
        "sensors[1].bands[1]",
        "'B13' is not a band",
    ),
    "unknown-collection": (
        {"sensors.1.collection": "sentinel-2-l1c"},
        "sensors[1].collection",
        "not a sentinel-2-l2a collection of planetary-computer",
    ),
    "empty-bands": ({"sensors.1.bands": []}, "sensors[1].bands", "at least 1 item"),
    "temporal-mode": (
        {"sensors.1.temporal": {"mode": "median"}},
        "sensors[1].temporal.mode",
        "'composite'",
    ),
    "series-without-max": (
        {"sensors.2.temporal": {"mode": "series"}},
        "sensors[2].temporal.max_scenes",
        "needs max_scenes",
    ),
    "best-with-max": (
        {"sensors.1.temporal": {"mode": "best", "max_scenes": 5}},
        "sensors[1].temporal.max_scenes",
        "no effect",
    ),
    "negative-dilation": (
        {"sensors.1.mask": {"dilation_m": -5}},
        "sensors[1].mask.dilation_m",
        "greater than or equal to 0",
    ),
    "valid-fraction-above-1": (
        {"sensors.1.mask": {"min_valid_fraction": 1.5}},
        "sensors[1].mask.min_valid_fraction",
        "less than or equal to 1",
    ),
    "duplicate-sensor": (
        {
            "sensors.2.id": "sentinel-2-l2a",
            "sensors.2.catalog": "https://earth-search.aws.element84.com/v1",
            "sensors.2.temporal": _DELETE,
        },
        "sensors[2].id",
        "listed twice",
    ),
    "two-references": (
        {"sensors.1.reference": True, "sensors.2.reference": True},
        "sensors",
        "found 2",
    ),
    "reference-coregistered": (
        {"sensors.1.reference": True, "sensors.1.coregister": True},
        "sensors[1].coregister",
        "reference sensor",
    ),
    "no-sensors": ({"sensors": []}, "sensors", "at least 1 item"),
    "missing-name": ({"name": _DELETE}, "name", "required field is missing"),
    "bad-name": ({"name": "my dataset!"}, "name", "should match pattern"),
    "missing-output": ({"output": _DELETE}, "output", "required field is missing"),
    "zero-tile-size": ({"grid.tile_size": 0}, "grid.tile_size", "greater than 0"),
    "unknown-grid-crs": ({"grid.crs": "epsg:3035"}, "grid.crs", "'utm'"),
    "unknown-label-kind": (
        {"labels.0.kind": "landcover"},
        "labels[0].kind",
        "'corine', 'osm', 'vector'",
    ),
    "unknown-nomenclature": (
        {"labels.0.nomenclature": "clc99"},
        "labels[0].nomenclature",
        "'bigearthnet19'",
    ),
    "label-missing-path": (
        {"labels.0.path": _DELETE},
        "labels[0].path",
        "required field is missing",
    ),
    "duplicate-label-name": ({"labels.1.name": "corine"}, "labels[1].name", "used twice"),
    "osm-bad-tag": (
        {"labels.1.classes.0.tags": ["building"]},
        "labels[1].classes[0].tags[0]",
        "pattern",
    ),
    "osm-duplicate-class": (
        {
            "labels.1.classes": [
                {"name": "water", "tags": ["natural=water"]},
                {"name": "water", "tags": ["waterway=*"]},
            ]
        },
        "labels[1].classes[1].name",
        "listed twice",
    ),
    "vector-without-field": (
        {"labels.1": {"kind": "vector", "path": "x.gpkg"}},
        "labels[1].class_field",
        "required field is missing",
    ),
    "split-sum": (
        {"split": {"fractions": {"train": 0.8, "val": 0.2, "test": 0.1}}},
        "split.fractions",
        "not 1",
    ),
    "split-method": ({"split": {"method": "stratified"}}, "split.method", "'block'"),
    "block-not-multiple": ({"split": {"block_size": 5000}}, "split.block_size", "not a multiple"),
    "block-with-random": (
        {"split": {"method": "random", "block_size": 12000}},
        "split.block_size",
        "only used by method 'block'",
    ),
    "codec": ({"output.codec": "gzip"}, "output.codec", "'blosc-lz4'"),
    "codec-level": (
        {"output.codec": "zstd", "output.codec_level": 30},
        "output.codec_level",
        "outside 1..22",
    ),
    "tiles-per-shard": (
        {"output.tiles_per_shard": 0},
        "output.tiles_per_shard",
        "greater than or equal to 1",
    ),
    "dask-address": (
        {"execution": {"dask_address": "localhost:8786"}},
        "execution.dask_address",
        "not a Dask scheduler",
    ),
    "workers-with-address": (
        {"execution": {"dask_address": "tcp://scheduler:8786", "workers": 4}},
        "execution.workers",
        "running one",
    ),
    "unknown-top-level": ({"outputs": {"path": "x"}}, "outputs", "did you mean 'output'"),
}


@pytest.mark.parametrize("case", sorted(BAD), ids=sorted(BAD))
def test_bad_recipe_names_the_field(case: str) -> None:
    changes, path, fragment = BAD[case]
    with pytest.raises(RecipeError) as info:
        _parse(changes)
    err = info.value
    assert [p.path for p in err.problems] == [path]
    assert fragment in err.problems[0].reason
    message = str(err)
    assert message.startswith(f"bad.yaml: {path}: ")
    assert "Fix: " in message
    assert isinstance(err, InvalidInputError)
    assert err.exit_code == 2


def test_base_recipe_is_valid_and_fills_expected_defaults() -> None:
    recipe = _parse({})
    s1, s2, landsat = recipe.sensors
    # the first *optical* sensor is the reference, even when a SAR sensor is listed first
    assert (s1.reference, s2.reference, landsat.reference) == (False, True, False)
    assert (s1.coregister, s2.coregister, landsat.coregister) == (True, False, True)
    assert recipe.reference_sensor.id is SensorId.SENTINEL_2_L2A
    assert (s1.provider, s2.provider, landsat.provider) == (
        Provider.PLANETARY_COMPUTER,
        Provider.PLANETARY_COMPUTER,
        Provider.ARCHIVE,
    )
    assert (s1.resolution, s2.resolution, landsat.resolution) == (10.0, 10.0, 30.0)
    assert s2.max_cloud_cover == 60.0
    assert landsat.archive_path == "data/archive-tiny"
    assert s1.archive_path is None
    assert [label.name for label in recipe.labels] == ["corine", "osm"]
    corine = recipe.labels[0]
    assert isinstance(corine, CorineLabels)
    assert corine.code_field == "Code_18"
    assert recipe.split.block_size_m(recipe.grid.tile_size) == 12000
    assert recipe.output.codec == "blosc-lz4"


def test_explicit_reference_and_sar_only_default() -> None:
    recipe = _parse({"sensors.2.reference": True})
    assert [s.reference for s in recipe.sensors] == [False, False, True]
    assert [s.coregister for s in recipe.sensors] == [True, True, False]
    sar_only = _parse({"sensors": [{"id": "sentinel-1-rtc", "catalog": "archive:a"}]})
    assert sar_only.reference_sensor.id is SensorId.SENTINEL_1_RTC


def test_explicit_provider_for_loopback_catalog() -> None:
    recipe = _parse(
        {"sensors.1.catalog": "http://127.0.0.1:8080/stac", "sensors.1.provider": "archive"}
    )
    assert recipe.sensors[1].provider is Provider.ARCHIVE


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(RecipeError) as info:
        _parse({"time.end": date(2024, 1, 1), "sensors.1.max_cloud_cover": -1, "name": _DELETE})
    paths = {p.path for p in info.value.problems}
    assert paths == {"name", "time.end", "sensors[1].max_cloud_cover"}
    message = str(info.value)
    assert message.startswith("bad.yaml: 3 problems:\n")
    assert all(f"  - {p}: " in message for p in paths)


def test_cross_field_problems_are_reported_together() -> None:
    with pytest.raises(RecipeError) as info:
        _parse(
            {"sensors.0.resolution": 7, "sensors.2.resolution": 45, "split": {"block_size": 1000}}
        )
    assert [p.path for p in info.value.problems] == [
        "sensors[0].resolution",
        "sensors[2].resolution",
        "split.block_size",
    ]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "name: a\nname: b\n",
            "line 2, column 1: while reading a mapping key 'name' appears twice",
        ),
        ("base: &b {x: 1}\nother: *b\n", "line 2, column 8: YAML aliases"),
        ("name: [unclosed\n", "line 2, column 1:"),
        ("- a\n- b\n", "the top level is a list"),
        ("", "the recipe is empty"),
        ("# only a comment\n", "the recipe is empty"),
        ("!!python/object:os.system ['true']\n", "could not determine a constructor"),
    ],
    ids=["duplicate-key", "alias", "syntax", "list", "empty", "comment-only", "python-tag"],
)
def test_unreadable_yaml(text: str, fragment: str) -> None:
    with pytest.raises(RecipeError) as info:
        parse_recipe(text, "r.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("r.yaml: ")


def test_load_recipe_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="recipe file not found") as info:
        load_recipe(tmp_path / "nope.yaml")
    assert str(tmp_path / "nope.yaml") in str(info.value)
    with pytest.raises(InvalidInputError, match="a directory"):
        load_recipe(tmp_path)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(InvalidInputError, match="not UTF-8"):
        load_recipe(binary)
    huge = tmp_path / "huge.yaml"
    huge.write_bytes(b"#" * (2 << 20))
    with pytest.raises(InvalidInputError, match="larger than"):
        load_recipe(huge)
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE.replace("tile_size: 1200", "tile_size: 1000"), encoding="utf-8")
    with pytest.raises(RecipeError) as err:
        load_recipe(bad)
    assert str(err.value).startswith(f"{bad}: sensors[2].resolution: 30 m does not divide")


def test_readme_recipe_is_valid() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:]]
    recipes = [b for b in blocks if b.startswith("name:")]
    if not recipes:
        pytest.skip("README.md shows no recipe")
    for text in recipes:
        assert parse_recipe(text, "README.md").sensors


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_shipped_recipes_are_valid(path: Path) -> None:
    recipe = load_recipe(path)
    assert recipe.name == path.stem or path.stem == "example"
    for sensor in recipe.sensors:
        assert recipe.grid.tile_size % sensor.resolution == 0
    # the JSON Schema editors use accepts them too
    data = json.loads(json.dumps(yaml.safe_load(path.read_text(encoding="utf-8")), default=str))
    jsonschema.Draft202012Validator(recipe_json_schema()).validate(data)


def test_shipped_recipes_cover_every_archive_sensor() -> None:
    names = {p.name for p in RECIPES}
    assert {"example.yaml", "demo.yaml", "tiny.yaml"} <= names
    for name in ("demo.yaml", "tiny.yaml"):
        recipe = load_recipe(REPO / "recipes" / name)
        assert {s.id for s in recipe.sensors} == {
            SensorId.SENTINEL_2_L2A,
            SensorId.LANDSAT_C2_L2,
            SensorId.SENTINEL_1_RTC,
            SensorId.ENMAP_L2A,
        }
        assert {s.provider for s in recipe.sensors} == {Provider.ARCHIVE}
        bounds = recipe.aoi.bounds()
        assert bounds is not None
        assert bounds[0] < 12.0 < bounds[2]  # straddles UTM zones 32 and 33


def test_json_schema_matches_committed_file() -> None:
    committed = SCHEMA_PATH.read_text(encoding="utf-8")
    assert committed == recipe_json_schema_text(), (
        "schemas/json/recipe.schema.json is out of date; regenerate it with "
        "`eoforge recipe schema --output schemas/json/recipe.schema.json`"
    )


def test_json_schema_rejects_unknown_fields() -> None:
    validator = jsonschema.Draft202012Validator(recipe_json_schema())
    data = json.loads(json.dumps(_base(), default=str))
    validator.validate(data)
    data["sensors"][0]["resolutoin"] = 10
    assert not validator.is_valid(data)


def _models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    from typing import get_args

    seen.add(model)
    for info in model.model_fields.values():
        stack: list[Any] = [info.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                if tp not in seen:
                    _models(tp, seen)
            else:
                stack.extend(get_args(tp))


def test_every_field_has_a_description_and_forbids_extras() -> None:
    seen: set[type[BaseModel]] = set()
    _models(Recipe, seen)
    assert len(seen) >= 18  # every section model was reached
    missing = [
        f"{m.__name__}.{name}"
        for m in seen
        for name, info in m.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == []
    assert {m.__name__ for m in seen if m.model_config.get("extra") != "forbid"} == set()
    assert {m.__name__ for m in seen if not m.model_config.get("frozen")} == set()


def test_recipe_is_immutable() -> None:
    recipe = _parse({})
    with pytest.raises(ValueError, match="frozen"):
        recipe.name = "other"  # type: ignore[misc]


def test_resolve_paths(tmp_path: Path) -> None:
    recipe = _parse({"output.path": "s3://bucket/x.zarr"})
    resolved = recipe.resolve_paths(tmp_path)
    assert resolved.sensors[2].catalog == f"archive:{tmp_path / 'data/archive-tiny'}"
    assert resolved.sensors[1].catalog == recipe.sensors[1].catalog  # URLs untouched
    assert resolved.labels[0].path == str(tmp_path / "data/corine.gpkg")
    assert resolved.output.path == "s3://bucket/x.zarr"
    assert recipe.sensors[2].catalog == "archive:data/archive-tiny"  # the original is unchanged
    local = _parse({"aoi": {"path": "../area.gpkg", "layer": "a"}}).resolve_paths(tmp_path)
    assert local.aoi.path == str(tmp_path.parent / "area.gpkg")
    assert local.output.path == str(tmp_path / "build/test.zarr")


def test_digest_is_stable_and_sensitive() -> None:
    assert _parse({}).digest() == _parse({}).digest()
    assert _parse({}).digest() != _parse({"split.seed": 1}).digest()
    # defaults are part of the digest: spelling one out does not change it
    assert _parse({}).digest() == _parse({"sensors.1.max_cloud_cover": 60}).digest()


def test_recipe_from_data_and_geometry_aoi() -> None:
    data = _base()
    data["aoi"] = {
        "geometry": {
            "type": "Polygon",
            "coordinates": [[[12.0, 48.0], [12.2, 48.0], [12.2, 48.1], [12.0, 48.0]]],
        }
    }
    recipe = recipe_from_data(data)
    assert recipe.aoi.bounds() == (12.0, 48.0, 12.2, 48.1)
    with pytest.raises(RecipeError, match=r"^<data>: aoi.geometry.coordinates\[0\]\[0\]\[0\]: "):
        recipe_from_data(
            {**data, "aoi": {"geometry": {"type": "Polygon", "coordinates": [[["a", 1]]]}}}
        )


# ---------------------------------------------------------------------------------------------
# periods
# ---------------------------------------------------------------------------------------------


def _utc(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


def _periods(start: date, end: date, mode: str, **extra: Any) -> list[Period]:
    return TimeRange.model_validate(
        {"start": start, "end": end, "periods": mode, **extra}
    ).to_periods()


def test_monthly_periods_across_a_year_boundary_are_clipped() -> None:
    periods = _periods(date(2023, 11, 15), date(2024, 2, 10), "monthly")
    assert [p.id for p in periods] == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert periods[0].start == _utc(2023, 11, 15)
    assert periods[0].end == _utc(2023, 12, 1)
    assert periods[1].start == _utc(2023, 12, 1)
    assert periods[2].end == _utc(2024, 2, 1)
    assert periods[-1].end == _utc(2024, 2, 10)


def test_seasonal_djf_spans_two_years() -> None:
    periods = _periods(date(2023, 12, 1), date(2024, 12, 1), "seasonal")
    assert [p.id for p in periods] == ["2024-DJF", "2024-MAM", "2024-JJA", "2024-SON"]
    assert (periods[0].start, periods[0].end) == (_utc(2023, 12, 1), _utc(2024, 3, 1))
    assert (periods[3].start, periods[3].end) == (_utc(2024, 9, 1), _utc(2024, 12, 1))
    clipped = _periods(date(2024, 1, 20), date(2024, 4, 1), "seasonal")
    assert [(p.id, p.start, p.end) for p in clipped] == [
        ("2024-DJF", _utc(2024, 1, 20), _utc(2024, 3, 1)),
        ("2024-MAM", _utc(2024, 3, 1), _utc(2024, 4, 1)),
    ]
    december = _periods(date(2024, 12, 5), date(2025, 1, 5), "seasonal")
    assert [p.id for p in december] == ["2025-DJF"]


def test_single_and_custom_periods() -> None:
    single = _periods(date(2024, 6, 1), date(2024, 9, 1), "single")
    assert [(p.id, p.start, p.end) for p in single] == [("p0", _utc(2024, 6, 1), _utc(2024, 9, 1))]
    custom = _periods(
        date(2024, 1, 1),
        date(2025, 1, 1),
        "custom",
        custom=[
            {"start": date(2024, 3, 1), "end": date(2024, 4, 15)},
            {"id": "harvest", "start": date(2024, 8, 1), "end": date(2024, 10, 1)},
        ],
    )
    assert [(p.id, p.start, p.end) for p in custom] == [
        ("p0", _utc(2024, 3, 1), _utc(2024, 4, 15)),
        ("harvest", _utc(2024, 8, 1), _utc(2024, 10, 1)),
    ]


def test_period_helpers() -> None:
    period = Period("2024-06", _utc(2024, 6, 1), _utc(2024, 7, 1))
    assert period.stac_datetime() == "2024-06-01T00:00:00Z/2024-06-30T23:59:59.999Z"
    assert period.contains(_utc(2024, 6, 30) + timedelta(hours=23, minutes=59))
    assert not period.contains(_utc(2024, 7, 1))
    assert period.contains(datetime(2024, 6, 1))  # naive = UTC
    with pytest.raises(ValueError, match="not after start"):
        Period("x", _utc(2024, 7, 1), _utc(2024, 6, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        Period("x", datetime(2024, 6, 1), datetime(2024, 7, 1))


@settings(max_examples=60, deadline=None)
@given(
    start=st.dates(min_value=date(2015, 1, 1), max_value=date(2030, 12, 31)),
    days=st.integers(min_value=1, max_value=800),
    mode=st.sampled_from([PeriodMode.MONTHLY, PeriodMode.SEASONAL, PeriodMode.SINGLE]),
)
def test_periods_tile_the_range_exactly(start: date, days: int, mode: PeriodMode) -> None:
    end = start + timedelta(days=days)
    periods = _periods(start, end, mode.value)
    assert periods[0].start == _utc(start.year, start.month, start.day)
    assert periods[-1].end == _utc(end.year, end.month, end.day)
    for before, after in itertools.pairwise(periods):
        assert before.end == after.start
    assert len({p.id for p in periods}) == len(periods)
    if mode is PeriodMode.MONTHLY:
        assert all(p.id == f"{p.start:%Y-%m}" for p in periods)
        assert all((p.end - p.start).days <= 31 for p in periods)
    if mode is PeriodMode.SEASONAL:
        assert all((p.end - p.start).days <= 92 for p in periods)


def test_recipe_periods_delegates_to_time() -> None:
    recipe = _parse({})
    assert [p.id for p in recipe.periods()] == ["2024-06", "2024-07", "2024-08"]
    assert copy.deepcopy(recipe) == recipe
