"""The label vocabulary's one home: what every consumer reads."""

import json
from pathlib import Path

import pytest

from refineformer3d import labels

BUNDLE = Path(__file__).resolve().parents[1] / "bundle"


@pytest.mark.parametrize("convention", sorted(labels.CONVENTIONS))
def test_regions_scheme_gives_every_brats_region_in_the_conventions_values(convention):
    parts = labels.CONVENTIONS[convention]
    regions = labels.region_labels("regions", convention, abbreviations=True)
    assert regions == {
        "TC": tuple(sorted((parts["necrosis"], parts["enhancing"]))),
        "WT": tuple(sorted(parts.values())),
        "ET": (parts["enhancing"],),
    }
    assert set(labels.label_names("regions", convention)) == set(parts.values())
    assert set(labels.label_colours("regions", convention)) == set(parts.values())


def test_classes_scheme_cannot_produce_enhancing_tumour():
    assert labels.region_labels("classes") == {"tumour core": (1,), "whole tumour": (1, 2)}
    assert labels.label_names("classes") == {1: "tumour core", 2: "edema"}


def test_unknown_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown label scheme 'labels'; expected one of \['classes', 'regions'\]"):
        labels.region_labels("labels")
    with pytest.raises(ValueError, match="unknown label convention 'brats2019'"):
        labels.label_names("regions", "brats2019")


def test_bundle_metadata_channel_def_is_the_classes_scheme():
    meta = json.loads((BUNDLE / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == labels.channel_def("classes")
