"""The dry run of the GPU evidence command (issue 18), on the CPU.

The GPU machine has no network and a Python of its own (torch and JAX built
for CUDA, optax, hypothesis, pytest, jinja2, pyyaml, numpy, tqdm, ml-dtypes;
no pydantic, no plotly, no TensorFlow, no MXNet). Here the same command runs
against a twin of it: a fresh virtual environment that sees exactly those
packages (and what they require) from this environment and nothing else, so
the wheelhouse has to carry the rest. It is built for this interpreter,
installed offline, and the same entry point runs with every GPU cell replaced
by its CPU twin and a tiny budget.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_evidence.py"

sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_evidence  # noqa: E402

sys.path.pop(0)


def _closure(names) -> list[importlib.metadata.Distribution]:
    """The installed distributions of `names` and everything they require (no extras)."""
    from packaging.requirements import Requirement

    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return list(seen.values())


def _gpu_twin(tmp_path: Path) -> Path:
    """A fresh venv that sees the GPU machine's preinstalled packages only."""
    for name in ("torch", "jax", "optax"):
        pytest.importorskip(name)
    system = tmp_path / "system-site"
    system.mkdir()
    for dist in _closure(gpu_evidence.PREINSTALLED):
        top = {Path(str(f)).parts[0] for f in dist.files or () if not str(f).startswith("..")}
        base = Path(dist.locate_file(""))
        for entry in top:
            link = system / entry
            if not link.exists() and (base / entry).exists():
                link.symlink_to(base / entry)
    env_dir = tmp_path / "gpu-python"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    (site / "gpu_twin_system.pth").write_text(str(system) + "\n", encoding="utf-8")
    return env_dir / "bin" / "python"


def test_wheelhouse_carries_exactly_what_the_gpu_machine_lacks(tmp_path):
    wheels = gpu_evidence.wheelhouse(tmp_path / "whl", None, gpu_evidence.PLATFORMS)
    names = {re.sub(r"[-_.]+", "-", w.name.split("-")[0]).lower() for w in wheels}
    assert names == {"optimizer-conformance", *gpu_evidence.MISSING_ON_GPU}
    assert not names & {re.sub(r"[-_.]+", "-", n).lower() for n in gpu_evidence.PREINSTALLED}
    assert sum(w.stat().st_size for w in wheels) < gpu_evidence.LIMIT_MIB * 2**20 / 2


def test_the_gpu_command_runs_on_cpu_twins_from_its_offline_wheelhouse(tmp_path):
    python = _gpu_twin(tmp_path)
    # the twin lacks what the GPU machine lacks
    assert subprocess.run([str(python), "-c", "import pydantic"], capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import torch, jax, optax, hypothesis, yaml, jinja2"], capture_output=True).returncode == 0
    subprocess.run([sys.executable, str(SCRIPT), "wheelhouse", "--out", str(tmp_path / "whl"), "--python-version", ""], check=True, capture_output=True)
    out = tmp_path / "out"
    done = subprocess.run(
        [str(python), str(SCRIPT), "run", "--wheelhouse", str(tmp_path / "whl"), "--site", str(tmp_path / "site"), "--out", str(out), "--work", str(tmp_path / "work"),
         "--cpu-twins", "--examples", "2", "--max-steps", "3", "--max-size", "4", "--jobs", "1", "--rules", "adam", "--dtypes", "float32,bfloat16",
         "--size", "20000", "--budget", "400"],
        capture_output=True, text=True, timeout=900, cwd=tmp_path,
    )
    log = (out / "log.txt").read_text(encoding="utf-8") if (out / "log.txt").is_file() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + log[-3000:]
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    ran = {c["id"] for c in summary["cells"] if not c.get("skipped") and c["examples"]}
    assert "adam[torch-fused-cpu-float32]" in ran and "adam[jax-jit-cpu-bfloat16]" in ran
    assert "adam[torch-forloop~fused-cpu-float32]" in ran  # the cross cells run too
    assert not summary["failed"], summary["failed"]
    assert (out / "index.html").stat().st_size > 10_000
    speed = json.loads((out / "speed.json").read_text(encoding="utf-8"))
    cases = {(c["framework"], c["mode"]) for c in speed["cases"]}
    assert {("torch", "forloop"), ("torch", "foreach"), ("torch", "fused"), ("jax", "jit"), ("reference kernel (float64)", "numpy (CPU)")} <= cases
    assert all(c["step_ms"] > 0 for c in speed["cases"])
    assert "done in" in log
    assert sorted(p.name for p in out.iterdir()) == ["index.html", "log.txt", "speed.json", "summary.json"]  # what comes back from the device
