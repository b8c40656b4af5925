"""The offline archive: a deterministic multi-sensor STAC archive with known ground truth."""
