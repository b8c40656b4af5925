"""Licence and attribution terms of the data eoforge builds from (a contract: data, no I/O).

The dataset card (``flows.card``) and the STAC Collection (``catalog.stac``) state the same
terms for the sensors and label sources a cube holds.
"""

from __future__ import annotations

__all__ = ["LABEL_TERMS", "SENSOR_TERMS", "label_terms", "sensor_terms"]

SENSOR_TERMS = {
    "sentinel": "Contains modified Copernicus Sentinel data, used under the Legal Notice on the "
    "use of Copernicus Sentinel Data and Service Information (free, full and open access; "
    "attribute as 'Contains modified Copernicus Sentinel data [year]').",
    "landsat": "Landsat data courtesy of the U.S. Geological Survey (USGS); USGS Landsat data "
    "are in the public domain (credit: 'Landsat data courtesy of the U.S. Geological Survey').",
    "enmap": "EnMAP data © DLR [year], all rights reserved; use is governed by the EnMAP data "
    "license terms of the German Aerospace Center (DLR).",
}
LABEL_TERMS = {
    "corine": "© European Union, Copernicus Land Monitoring Service [year], European "
    "Environment Agency (EEA) (CORINE Land Cover; free, full and open access with attribution).",
    "osm": "© OpenStreetMap contributors; data available under the Open Database License "
    "(ODbL 1.0): attribute it and share derived databases alike.",
    "vector": "A user-supplied vector file: its licence is not known to eoforge; check it "
    "before sharing this dataset.",
}


def sensor_terms(name: str) -> str:
    """The terms of a sensor (cube group name, e.g. ``sentinel-2-l2a``)."""
    for prefix, text in SENSOR_TERMS.items():
        if name.startswith(prefix):
            return text
    return "Licence not known to eoforge: check the provider's terms."


def label_terms(kind: str) -> str:
    """The terms of a label source kind (``corine``, ``osm``; anything else: a user's file)."""
    return LABEL_TERMS.get(kind, LABEL_TERMS["vector"])
