"""Train a tiny CNN on an eoforge cube: CORINE multi-labels from Sentinel-2, on CPU, a few steps.

Run: ``python examples/train_tiny_cnn.py CUBE [STEPS]``. The steps: query the tile catalog,
read the selected tiles with ``TileDataset``, shard-aware shuffling with ``ShardAwareSampler``,
a plain ``DataLoader`` (with ``catalog.loader_context()``), a small CNN and
``BCEWithLogitsLoss``. The workers only decode: they hand over the stored integers
(``physical=False``), and ``to_physical`` turns them into normalised float32 on the training
device (the GPU when there is one).
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from torch.utils.data import DataLoader

from catalog import loader_context
from catalog.dataset import TileDataset
from catalog.sampler import ShardAwareSampler


def main(
    cube: str,
    steps: int = 5,
    *,
    sensor: str = "sentinel-2-l2a",
    source: str = "corine",
    batch_size: int = 4,
    num_workers: int = 2,
) -> list[float]:
    """Train for ``steps`` batches and return the losses (also printed)."""
    dataset = TileDataset(
        cube,
        {"split": "train", "sensors": [sensor]},  # the catalog query
        sensors=[sensor],
        labels=[source],  # label_<source> (y, x) and multilabel_<source> (class,)
        time=0,  # first time plane: (1, band, y, x)
        normalize="cube",  # per-band mean/std over valid pixels, cached in the cube
        fill_value=0.0,  # no observation -> 0 (the band mean after normalising)
        metadata=False,
        physical=False,  # stored integers; to_physical below gives the float32 values
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    sampler = ShardAwareSampler(dataset, seed=0)  # DDP: rank/world size from torch.distributed
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # queues without feeder threads: less CPU per batch (catalog._queues)
        multiprocessing_context=loader_context() if num_workers else None,
    )
    first = dataset.to_physical(dataset[0])
    n_bands = first[sensor].shape[1]
    n_classes = first[f"multilabel_{source}"].shape[0]
    model = nn.Sequential(
        nn.Conv2d(n_bands, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, n_classes),
    ).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    losses: list[float] = []
    for epoch in range(1000):
        sampler.set_epoch(epoch)  # a new shard-grouped order every epoch
        for stored in loader:
            on_device = {k: v.to(device, non_blocking=True) for k, v in stored.items()}
            batch = dataset.to_physical(on_device)  # float32, normalised, fill -> 0
            x = batch[sensor][:, 0]  # (N, band, y, x) float32
            y = batch[f"multilabel_{source}"]  # (N, class) float32 0/1, NaN if not labelled
            labelled = ~torch.isnan(y).any(dim=1)
            if not labelled.any():
                continue
            loss = loss_fn(model(x[labelled]), y[labelled])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            print(f"step {len(losses)}: loss {loss.item():.4f}")
            if len(losses) == steps:
                return losses
        if not losses:
            raise SystemExit("no labelled training tiles in this cube")
    return losses


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
