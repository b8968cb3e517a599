"""GPU evidence in one command, for a GPU machine with no network.

Two halves:

1. Here, with the package registry (CPU machine):

       python3 benchmarks/gpu_evidence.py wheelhouse --out .whl

   builds a wheelhouse of exactly what the GPU machine's Python lacks: this
   project's wheel, pydantic with its core, annotated-types and
   typing-inspection, plotly, and (for their minimum versions) narwhals and
   typing-extensions, at the versions installed here (so the GPU side runs
   what CI tested), for CPython 3.12 on manylinux x86-64 (`--python-version`,
   `--platform`); it checks the size (well under the device's 64 MiB).
   Everything else is already there: torch and JAX built for CUDA, optax,
   hypothesis, pytest, jinja2, pyyaml, numpy, tqdm, ml-dtypes (`PREINSTALLED`,
   read off the machine's image).

2. On the GPU machine, from anywhere (the checkout travels with the wheelhouse):

       python3 benchmarks/gpu_evidence.py run --wheelhouse .whl --out $OUT/gpu

   installs the wheelhouse offline into a target directory that the system
   Python sees through PYTHONPATH (its own packages stay as they are), then
   runs, under a wall-clock budget (`--budget`, default 360 s for the cells):
   - the GPU cells: torch (forloop, foreach, fused, SparseAdam) on cuda and
     JAX/Optax (eager, jit) on gpu, every rule and dtype, dense and sparse,
     and the cpu~cuda and cpu~gpu cross cells (`--examples` per cell);
   - the Adam speed case: one step on 1e8 float32 elements through each
     torch mode on cuda and Optax jit on gpu, and the spec's own equations
     in float64 on the GPU through CuPy (`--size`), each as a fraction of the
     device's copy bandwidth measured in the same process;
   and writes OUT: summary.json, index.html (gzipped if over 15 MiB), speed.json,
   log.txt (the run's full results stay in --work).
   The whole command takes about 7 minutes of device time (install 10 s,
   probe 20 s, cells <= budget, speed case about 60 s).

`run --cpu-twins` is the same entry point with every GPU cell replaced by
its CPU twin (devices cpu) and numpy standing in for CuPy: the dry run that
CI runs (tests/test_gpu_evidence.py), with a tiny budget, so the command is
known to work before a GPU is spent on it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: What the GPU machine's Python lacks of ours (device/KINDS.md, nvidia-h200,
#: "Python packages already there"): carried as wheels, at the versions here.
MISSING_ON_GPU = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "plotly", "narwhals", "typing-extensions")
#: What it has, used as they are (the dry run gives its twin exactly these).
PREINSTALLED = ("torch", "jax", "jaxlib", "optax", "hypothesis", "pytest", "jinja2", "pyyaml", "numpy", "tqdm", "ml-dtypes", "packaging")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
LIMIT_MIB = 64


def _log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "log.txt", "a", encoding="utf-8") as f:
        f.write(text + "\n")


# ---------------------------------------------------------------- the CPU half


def wheelhouse(out: Path, python_version: str | None, platforms: tuple[str, ...]) -> list[Path]:
    """The project's wheel and the missing dependencies, pinned to the versions installed here."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.whl"):
        old.unlink()
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(out), str(ROOT)], check=True)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING_ON_GPU]
    target = []
    if python_version:
        target = ["--python-version", python_version, "--implementation", "cp"]
        for p in platforms:
            target += ["--platform", p]
    subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *target, "-d", str(out), *pins], check=True)
    wheels = sorted(out.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 2**20
    if size > LIMIT_MIB / 2:
        raise SystemExit(f"the wheelhouse is {size:.1f} MiB: too close to the device's {LIMIT_MIB} MiB limit")
    print(f"wheelhouse {out}: {len(wheels)} wheels, {size:.1f} MiB (pins: {', '.join(pins)})")
    for w in wheels:
        print(f"  {w.name}")
    return wheels


# ---------------------------------------------------------------- the GPU half


def install(wheels: Path, site: Path) -> dict[str, str]:
    """The wheelhouse, offline, into `site` (seen through PYTHONPATH): the environment of the run."""
    site.mkdir(parents=True, exist_ok=True)
    found = sorted(str(w) for w in wheels.glob("*.whl"))
    if not found:
        raise SystemExit(f"no wheels in {wheels}: build them here first (`gpu_evidence.py wheelhouse --out {wheels}`)")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                    "--target", str(site), *found], check=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # JAX beside torch on one GPU
    env["PYTHONUNBUFFERED"] = "1"
    return env


PROBE = """
import json, platform
import conformance, pydantic, plotly, numpy
out = {"python": platform.python_version(), "conformance": conformance.__version__, "pydantic": pydantic.VERSION,
       "plotly": plotly.__version__, "numpy": numpy.__version__}
try:
    import torch
    out["torch"] = torch.__version__
    out["cuda"] = torch.cuda.is_available() and torch.cuda.get_device_name(0)
    out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
except Exception as exc:
    out["torch"] = f"unavailable: {exc}"
try:
    import jax, optax
    out["jax"] = jax.__version__; out["optax"] = optax.__version__
    out["jax_devices"] = [str(d) for d in jax.devices()]
except Exception as exc:
    out["jax"] = f"unavailable: {exc}"
print(json.dumps(out))
"""


def cells(env: dict[str, str], out: Path, work: Path, args: argparse.Namespace) -> int:
    devices = "cpu" if args.cpu_twins else "cuda,gpu,cpu~cuda,cpu~gpu"
    cmd = [sys.executable, "-m", "conformance", "run", "--frameworks", "torch,jax", "--devices", devices,
           "--examples", str(args.examples), "--max-steps", str(args.max_steps), "--max-size", str(args.max_size),
           "--jobs", str(args.jobs), "--out", str(work), "--no-progress"]
    if args.rules:
        cmd += ["--rules", args.rules]
    if args.dtypes:
        cmd += ["--dtypes", args.dtypes]
    _log(out, "$ " + " ".join(cmd))
    t0 = time.perf_counter()
    with open(out / "log.txt", "a", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work.parent)
        try:
            code = proc.wait(timeout=args.budget)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = -1
            log.write(f"\nthe cells ran past the budget of {args.budget} s and were stopped; every result so far is kept\n")
    _log(out, f"cells: exit {code} after {time.perf_counter() - t0:.0f} s")
    # the summary and report of whatever ran (a stopped run keeps its JSONL)
    subprocess.run([sys.executable, "-m", "conformance", "report", str(work)], env=env, cwd=work.parent,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # only these come back from the device (at most 8 files of 16 MiB): larger ones gzipped
    for name in ("summary.json", "index.html"):
        src = work / name
        if not src.is_file():
            continue
        data = src.read_bytes()
        if len(data) > 15 * 2**20:
            import gzip

            (out / (name + ".gz")).write_bytes(gzip.compress(data))
        else:
            (out / name).write_bytes(data)
    return code


SPEED = r"""
import json, sys, time
import numpy as np
size, cpu_twins = int(sys.argv[1]), sys.argv[2] == "1"
out = {"size": size, "dtype": "float32", "cases": []}

def best(fn, sync, repeat=5):
    fn(); sync()
    times = []
    for _ in range(repeat):
        t = time.perf_counter(); fn(); sync(); times.append(time.perf_counter() - t)
    return min(times)

try:
    import torch
    dev = "cpu" if cpu_twins or not torch.cuda.is_available() else "cuda"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    a = torch.empty(size, dtype=torch.float32, device=dev); b = torch.empty_like(a)
    copy = best(lambda: b.copy_(a), sync)
    out["copy_bandwidth_GBps"] = 2 * 4 * size / copy / 1e9
    out["device"] = torch.cuda.get_device_name(0) if dev == "cuda" else "cpu"
    del a, b
    for mode in ("forloop", "foreach", "fused"):
        p = torch.zeros(size, dtype=torch.float32, device=dev, requires_grad=True)
        p.grad = torch.full_like(p, 0.5)
        kw = {"foreach": mode == "foreach", "fused": mode == "fused"} if mode != "forloop" else {"foreach": False}
        opt = torch.optim.Adam([p], lr=1e-3, **kw)
        t = best(opt.step, sync)
        # Adam moves p, g, m, v in and p, m, v out: 7 float32 arrays
        out["cases"].append({"framework": "torch", "mode": mode, "device": dev, "step_ms": t * 1e3,
                             "bandwidth_fraction": 7 * 4 * size / t / 1e9 / out["copy_bandwidth_GBps"]})
        del p, opt
        if dev == "cuda":
            torch.cuda.empty_cache()
except Exception as exc:
    out["torch_error"] = repr(exc)

try:
    import jax, jax.numpy as jnp, optax
    tx = optax.adam(1e-3)
    p = jnp.zeros(size, jnp.float32); g = jnp.full(size, 0.5, jnp.float32); s = tx.init(p)
    @jax.jit
    def step(p, s):
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
    holder = {}
    def run():
        holder["r"] = step(p, s)
    t = best(run, lambda: jax.block_until_ready(holder["r"]))
    frac = 7 * 4 * size / t / 1e9 / out["copy_bandwidth_GBps"] if "copy_bandwidth_GBps" in out else None
    out["cases"].append({"framework": "jax", "mode": "jit", "device": str(jax.devices()[0]), "step_ms": t * 1e3, "bandwidth_fraction": frac})
except Exception as exc:
    out["jax_error"] = repr(exc)

try:
    # the spec's own equations (the reference kernel's), float64, on CuPy arrays:
    # the harness's expressions call numpy ufuncs, which CuPy arrays take over
    try:
        if cpu_twins:
            raise ImportError("cpu twins: numpy stands in for CuPy")
        import cupy as xp
        sync = xp.cuda.Device().synchronize
        where = "cupy"
    except ImportError:
        xp, sync, where = np, (lambda: None), "numpy (CPU)"
    from conformance.catalog import load_catalog
    spec = load_catalog().get("adam")
    eqs = spec.equations(())
    env = {k: (v if isinstance(v, bool) else np.float64(v)) for k, v in spec.resolve({}).items()}
    env.update(p=xp.zeros(size), g=xp.full(size, 0.5), m=xp.zeros(size), v=xp.zeros(size), v_max=xp.zeros(size), t=1, slice_sq=None)
    def kernel_step():
        env["slice_sq"] = env["g"] * env["g"]
        for eq in eqs:
            env[eq.target] = eq.expr(env)
    t = best(kernel_step, sync, repeat=3)
    frac = 7 * 8 * size / t / 1e9 / (out.get("copy_bandwidth_GBps") or float("nan"))
    out["cases"].append({"framework": "reference kernel (float64)", "mode": where, "device": where, "step_ms": t * 1e3, "bandwidth_fraction": frac})
except Exception as exc:
    out["kernel_error"] = repr(exc)
print(json.dumps(out))
"""


def speed(env: dict[str, str], out: Path, args: argparse.Namespace) -> None:
    done = subprocess.run([sys.executable, "-c", SPEED, str(args.size), "1" if args.cpu_twins else "0"], env=env, cwd=out,
                          capture_output=True, text=True, timeout=args.speed_budget)
    if done.returncode != 0:
        _log(out, f"speed case failed: {done.stderr[-2000:]}")
        return
    data = json.loads(done.stdout.strip().splitlines()[-1])
    (out / "speed.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    _log(out, f"speed case, Adam on {data['size']:.0e} float32 elements (copy bandwidth {data.get('copy_bandwidth_GBps', 0):.0f} GB/s):")
    for c in data["cases"]:
        frac = c.get("bandwidth_fraction")
        _log(out, f"  {c['framework']:<26} {c['mode']:<12} {c['step_ms']:9.3f} ms/step"
                  + (f"  {frac:.2f} of the copy bandwidth" if isinstance(frac, float) and frac == frac else ""))
    for key in ("torch_error", "jax_error", "kernel_error"):
        if key in data:
            _log(out, f"  {key}: {data[key]}")


def run(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "log.txt").write_text("", encoding="utf-8")
    t0 = time.perf_counter()
    env = install(Path(args.wheelhouse).resolve(), Path(args.site).resolve())
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=out, capture_output=True, text=True)
    if probe.returncode != 0:
        _log(out, f"the environment is broken after installing the wheelhouse: {probe.stderr[-2000:]}")
        return 2
    _log(out, f"gpu_evidence {'(cpu twins) ' if args.cpu_twins else ''}on {platform.node()}: {probe.stdout.strip()}")
    work = Path(args.work).resolve()
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    code = cells(env, out, work / "run", args)
    if not args.no_speed:
        speed(env, out, args)
    _log(out, f"done in {time.perf_counter() - t0:.0f} s; {out}: " + ", ".join(sorted(p.name for p in out.iterdir() if p.is_file())))
    return 0 if code in (0, 1, -1) else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("wheelhouse", help="here: the wheels the GPU machine lacks")
    w.add_argument("--out", default=".whl")
    w.add_argument("--python-version", default="3.12", help="the GPU machine's Python (empty: this interpreter's)")
    w.add_argument("--platform", action="append", default=None)
    r = sub.add_parser("run", help="there: install offline, run the GPU cells and the speed case")
    r.add_argument("--wheelhouse", default=".whl")
    r.add_argument("--site", default="/tmp/oc-gpu-site", help="where the wheelhouse is installed (on PYTHONPATH)")
    r.add_argument("--out", required=True)
    r.add_argument("--work", default="/tmp/oc-gpu-work", help="the run's full results (only the summary, report, speed and log go to --out)")
    r.add_argument("--cpu-twins", action="store_true", help="the dry run: CPU cells instead of GPU ones, numpy for CuPy")
    r.add_argument("--examples", type=int, default=8)
    r.add_argument("--max-steps", type=int, default=10)
    r.add_argument("--max-size", type=int, default=32)
    r.add_argument("--jobs", type=int, default=4)
    r.add_argument("--rules", default=None)
    r.add_argument("--dtypes", default=None)
    r.add_argument("--budget", type=float, default=360.0, help="wall-clock seconds for the cells")
    r.add_argument("--size", type=int, default=100_000_000, help="elements of the speed case")
    r.add_argument("--speed-budget", type=float, default=180.0)
    r.add_argument("--no-speed", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "wheelhouse":
        wheelhouse(Path(args.out), args.python_version or None, tuple(args.platform or PLATFORMS))
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
