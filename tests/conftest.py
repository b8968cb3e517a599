"""Shared fixtures: the built-in catalog, loaded once per session."""

import pytest

from conformance.catalog import load_catalog


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()
