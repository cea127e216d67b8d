"""Configs saved before the MIL networks moved to `medconv.models.mil` (and the MIL prediction writer to
`medconv.callbacks`) name the old class paths: they still resolve, to the same classes, with a FutureWarning that
names the new path."""

from __future__ import annotations

import importlib

import pytest

import medconv.callbacks
import medconv.models.mil


@pytest.mark.parametrize("name", ["ABMIL", "CLAMSB", "TransMIL", "GatedAttention", "MILOutput"])
def test_old_network_class_paths_resolve_with_a_warning(name):
    with pytest.warns(FutureWarning, match=f"medconv.models.mil.{name}"):
        assert getattr(importlib.import_module("medconv.mil"), name) is getattr(medconv.models.mil, name)


def test_old_writer_class_path_resolves_with_a_warning():
    with pytest.warns(FutureWarning, match="medconv.callbacks.BagPredictionWriter"):
        writer = importlib.import_module("medconv.mil.writer").BagPredictionWriter
    assert writer is medconv.callbacks.BagPredictionWriter


def test_unknown_names_still_fail():
    mil = importlib.import_module("medconv.mil")
    with pytest.raises(AttributeError, match="NoSuchNet"):
        _ = mil.NoSuchNet
