"""The one place that maps a framework name to its adapter.

The harness never branches on a framework's name: it asks this registry
which adapter module serves a name, which Python module it needs and which
distribution reports its version. Availability is probed with
`importlib.util.find_spec`, so listing frameworks never imports them.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class FrameworkEntry:
    name: str
    adapter: str  # module of the adapter, inside this package
    module: str  # the framework's own top-level module
    distributions: tuple[str, ...]  # PyPI names that may provide it, for the version
    title: str
    devices: tuple[str, ...] = ("cpu", "gpu")  # device names the adapter takes, cpu first
    #: what `conformance setup-worker` installs into the framework's own
    #: environment, for a framework that cannot share the harness's (numpy pins)
    worker_requirements: tuple[str, ...] = ()
    #: module that writes a standalone reproducer's framework part (no framework import)
    script: str | None = None
    #: the packages whose versions describe it, each "dist" or "dist|alternative dist"
    packages: tuple[str, ...] = ()
    #: the implementation paths its adapter selects by mode name; a spec mode of
    #: another name must set its own optimizer or args (else a typo would
    #: silently test the default path)
    modes: tuple[str, ...] = ()
    #: the oldest release of each package that this adapter was run against
    #: (README, "Environments"); an older one is refused when its worker starts
    oldest: tuple[tuple[str, str], ...] = ()
    #: the top-level modules that are the framework itself: an optimizer under
    #: any other module is a user's target, imported only when allowed
    own_modules: tuple[str, ...] = ()


FRAMEWORKS: dict[str, FrameworkEntry] = {
    entry.name: entry
    for entry in (
        FrameworkEntry(
            "torch", "conformance.adapters.torch", "torch", ("torch",), "PyTorch", ("cpu", "cuda"),
            script="conformance.adapters.torch_script", packages=("torch",),
            modes=("forloop", "foreach", "fused", "differentiable", "capturable"), oldest=(("torch", "2.13"),),
            own_modules=("torch",),
        ),
        FrameworkEntry(
            "tensorflow",
            "conformance.adapters.tensorflow",
            "tensorflow",
            ("tensorflow-cpu", "tensorflow"),
            "TensorFlow / Keras",
            script="conformance.adapters.tensorflow_script",
            packages=("tensorflow-cpu|tensorflow", "keras"),
            modes=("eager", "function", "xla", "v1", "legacy", "legacy_plain"), oldest=(("tensorflow", "2.15"),),
            own_modules=("tensorflow", "tf", "keras"),
        ),
        FrameworkEntry(
            "jax", "conformance.adapters.jax", "optax", ("optax",), "JAX / Optax", script="conformance.adapters.jax_script",
            packages=("jax", "jaxlib", "optax"), modes=("eager", "jit"), oldest=(("jax", "0.4.38"), ("optax", "0.2.3")),
            own_modules=("optax",),
        ),
        # MXNet 1.9.1 (the last release) needs numpy < 1.24: its own worker environment
        FrameworkEntry(
            "mxnet", "conformance.adapters.mxnet", "mxnet", ("mxnet",), "MXNet",
            worker_requirements=("mxnet==1.9.1", "numpy<1.24"), script="conformance.adapters.mxnet_script",
            packages=("mxnet", "numpy"), modes=("updater", "multi_precision"), oldest=(("mxnet", "1.3"),),
            own_modules=("mxnet",),
        ),
    )
}

def foreign_module(framework: str, optimizer: str) -> str | None:
    """The top-level module of `optimizer` when it is not the framework's own
    (a third-party library or a team's code: importing it runs its code, so
    it needs the user's leave, `--allow-import`); None for the framework's own."""
    top = optimizer.split(".", 1)[0]
    return None if top in entry(framework).own_modules else top


def _release(version: str) -> tuple[int, ...]:
    """'2.13.0+cpu' -> (2, 13, 0); '1.9.1rc0' -> (1, 9, 1)."""
    parts = []
    for piece in version.split("+")[0].split("."):
        m = re.match(r"\d+", piece)
        if m is None:
            break
        parts.append(int(m.group()))
        if m.end() != len(piece):
            break
    return tuple(parts)


def too_old(framework: str, versions: dict[str, str | None]) -> str | None:
    """Why a worker's framework is older than the oldest release its adapter
    was run against (None when it is not, or its version is unknown)."""
    entry = FRAMEWORKS.get(framework)
    if entry is None:
        return None
    for package, oldest in entry.oldest:
        have = versions.get(package)
        if have and _release(have) < _release(oldest):
            return (f"{package} {have} is older than the oldest release the {entry.title} adapter was run against"
                    f" ({package} {oldest}); results from it would be unchecked (README: Environments)")
    return None


#: `reference` is the float64 kernel itself; it needs no adapter.
REFERENCE = "reference"


@dataclass(frozen=True)
class Availability:
    framework: str
    installed: bool
    version: str | None
    adapter: bool
    reason: str | None


def entry(name: str) -> FrameworkEntry:
    try:
        return FRAMEWORKS[name]
    except KeyError:
        raise KeyError(f"unknown framework {name!r} (known: {', '.join(FRAMEWORKS)})") from None


def availability(name: str) -> Availability:
    e = entry(name)
    installed = importlib.util.find_spec(e.module) is not None
    version = None
    for dist in e.distributions:
        try:
            version = importlib.metadata.version(dist)
            break
        except importlib.metadata.PackageNotFoundError:
            continue
    has_adapter = importlib.util.find_spec(e.adapter) is not None
    reason = None
    if not installed:
        reason = (
            f"{e.module} is not importable in this Python and no worker environment was found"
            f" (pass --python {name}=PYTHON, set CONFORMANCE_PYTHON_{name.upper()}, or create .venv-{name}:"
            f" see README.md)"
        )
    elif not has_adapter:
        reason = f"no adapter module {e.adapter} in this version of optimizer-conformance"
    return Availability(name, installed, version, has_adapter, reason)


def package_versions(name: str) -> dict[str, str]:
    """Each of the framework's packages with its own version, in this Python
    (`jax 0.10.2, jaxlib 0.10.2, optax 0.2.8`, not optax's version as JAX's)."""
    out = {}
    for spec in entry(name).packages:
        for dist in spec.split("|"):
            try:
                out[dist] = importlib.metadata.version(dist)
                break
            except importlib.metadata.PackageNotFoundError:
                continue
    return out


def worker_package_versions(name: str, python: str) -> dict[str, str] | None:
    """The framework's package versions in a worker environment (None: it does
    not import there), asked of that interpreter."""
    import json
    import subprocess

    e = entry(name)
    probe = (
        "import importlib.metadata as m, json\n"
        f"import {e.module}\n"
        "out = {}\n"
        f"for spec in {list(e.packages)!r}:\n"
        "    for d in spec.split('|'):\n"
        "        try:\n"
        "            out[d] = m.version(d); break\n"
        "        except m.PackageNotFoundError:\n"
        "            pass\n"
        "print(json.dumps(out))"
    )
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    try:
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


def worker_python(name: str, root: str | Path | None = None) -> str | None:
    """An interpreter that has `name` installed, for a framework that cannot be
    imported here (MXNet needs numpy < 1.24, so it lives in its own
    environment). Looked up, in order: the environment variable
    CONFORMANCE_PYTHON_<NAME>, then `.venv-<name>` and tox's `.tox/<name>-worker`
    under `root` (default: the current directory). None if there is none."""
    given = os.environ.get(f"CONFORMANCE_PYTHON_{name.upper()}")
    if given:
        return given
    base = Path(root) if root is not None else Path.cwd()
    for env in (base / f".venv-{name}", base / ".tox" / f"{name}-worker"):
        for python in (env / "bin" / "python", env / "Scripts" / "python.exe"):
            if python.is_file():
                return str(python)
    return None
