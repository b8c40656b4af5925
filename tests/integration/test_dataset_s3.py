"""TileDataset reading a cube over the S3 API: a moto server on 127.0.0.1, pixels through s3fs.

The catalog reader is local-only, so the test keeps a local folder that holds only the cube's
root ``zarr.json`` and its ``catalog/`` (no pixel arrays): every array the dataset reads must come
over S3. Samples must equal those of the same cube read locally, with and without DataLoader
workers, and ``normalize="cube"`` writes its statistics cache into the bucket.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))

from _dataset_synth import LS, S2, build_cube

from catalog.dataset import STATS_PATH, TileDataset
from catalog.sampler import ShardAwareSampler

pytestmark = pytest.mark.integration

BUCKET = "eoforge-test"
CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A moto S3 server on a free loopback port with the synthetic cube uploaded."""
    boto3 = pytest.importorskip("boto3")
    server_mod = pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    cube = build_cube(tmp_path_factory.mktemp("s3") / "cube.zarr", n_tiles=10)
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=CREDENTIALS["key"],
            aws_secret_access_key=CREDENTIALS["secret"],
            region_name="us-east-1",
        )
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(cube.rglob("*")):
            if path.is_file() and "catalog" not in path.relative_to(cube).parts:
                key = f"cube.zarr/{path.relative_to(cube).as_posix()}"
                client.upload_file(str(path), BUCKET, key)
        # The local side: the catalog and the root metadata only, no pixel arrays.
        local = tmp_path_factory.mktemp("s3-catalog") / "cube.zarr"
        local.mkdir()
        shutil.copytree(cube / "catalog", local / "catalog")
        shutil.copy(cube / "zarr.json", local / "zarr.json")
        yield {
            "cube": cube,
            "catalog": local,
            "client": client,
            "uri": f"s3://{BUCKET}/cube.zarr",
            "options": {"endpoint_url": endpoint, **CREDENTIALS},
        }
    finally:
        server.stop()


def _same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[key], equal_nan=True, rtol=0, atol=0)
        else:
            assert value == b[key]


def test_s3_samples_equal_local_samples(s3: dict[str, Any]) -> None:
    remote = TileDataset(s3["uri"], storage_options=s3["options"], catalog=s3["catalog"])
    local = TileDataset(s3["cube"])
    assert remote.positions.tolist() == local.positions.tolist()
    assert not (s3["catalog"] / S2).exists()  # the pixels can only come from the bucket
    for i in range(len(local)):
        _same(remote[i], local[i])


def test_s3_with_workers_query_and_normalize(s3: dict[str, Any]) -> None:
    remote = TileDataset(
        s3["uri"],
        {"split": "train"},
        storage_options=s3["options"],
        catalog=s3["catalog"],
        normalize="cube",
        bands={S2: ["B04"]},
        resize=8,
    )
    # The statistics cache went into the bucket, not into the local catalog copy.
    body = s3["client"].get_object(Bucket=BUCKET, Key=f"cube.zarr/{STATS_PATH}")["Body"].read()
    stats = json.loads(body)
    assert set(stats["sensors"]) == {S2, LS}
    assert not (s3["catalog"] / STATS_PATH).exists()
    local = TileDataset(
        s3["cube"],
        {"split": "train"},
        normalize={name: stats["sensors"][name] for name in (S2, LS)},
        bands={S2: ["B04"]},
        resize=8,
    )
    _same(remote[0], local[0])  # opened in the parent first: forked workers must reopen
    loader = DataLoader(
        remote, batch_size=None, num_workers=2, sampler=ShardAwareSampler(remote, seed=1)
    )
    seen = []
    for sample in loader:
        _same(sample, local[int(sample["index"])])
        seen.append(int(sample["position"]))
    assert sorted(seen) == local.positions.tolist()
    assert np.isfinite(local[0][LS].numpy()).any()


def test_remote_cube_without_catalog_says_how(s3: dict[str, Any]) -> None:
    from schemas.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="catalog"):
        TileDataset(s3["uri"], storage_options=s3["options"])
