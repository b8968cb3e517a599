"""Shared fixtures: the built-in catalog, loaded once per session.

The tests run adapters in this process (InProcessHost), which imports their
modules: they are loaded here, before any test draws a case, so that
hypothesis' constants from local modules are the same for every test
whatever ran before it in this worker (see
conformance.strategies.settle_local_constants). Torch before TensorFlow.
"""

import importlib.util

import pytest

from conformance.catalog import load_catalog
from conformance.strategies import settle_local_constants

settle_local_constants(tuple(fw for fw, module in (("torch", "torch"), ("tensorflow", "tensorflow"), ("jax", "optax"))
                             if importlib.util.find_spec(module) is not None))


@pytest.fixture(scope="session")
def catalog():
    return load_catalog()
