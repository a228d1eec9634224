"""Shared helpers of the benchmark scripts: machine info, subprocesses with peak memory, GEMM rate,
compilation counting, tables and result files.

Peak memory. XLA allocates outside Python's allocator, so tracemalloc sees almost nothing; we
read the kernel's numbers instead. A measurement runs in its own subprocess and its peak is
``ru_maxrss`` from ``os.wait4`` on that child: the largest resident set of the child or of any
descendant it waited for (a maximum, not a sum). Inside a process, VmHWM and VmRSS come from
/proc/self/status.

This module imports only the standard library at the top, so the sGDML worker can import it from
its own virtual environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DATA = Path(os.environ.get("FORCEGP_PUBLISHED", ROOT.parent / "shared" / "data" / "published"))
SGDML_PYTHON = ROOT / ".venv-sgdml" / "bin" / "python"
KCAL_MOL = 0.0433641043  # eV per kcal/mol (ase.units.kcal / ase.units.mol)
RESULT_TAG = "BENCHMARK-RESULT "  # prefix of the line on which a worker prints its JSON result
GiB = 2**30


def rmd17_path(molecule: str, part: str, split: str = "01") -> Path:
    return DATA / f"rmd17_{molecule}_{part}_{split}.npz"


# ----------------------------------------------------------------------------- machine


def _proc_kib(path: str, key: str) -> int:
    """A 'key: value kB' field of a /proc file, in bytes (0 where unreadable)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mem_available_bytes() -> int:
    return _proc_kib("/proc/meminfo", "MemAvailable")


def peak_rss_self() -> int:
    """Peak resident set (VmHWM) of this process, bytes."""
    return _proc_kib("/proc/self/status", "VmHWM")


def current_rss_self() -> int:
    return _proc_kib("/proc/self/status", "VmRSS")


def reset_peak_rss_self() -> int:
    """Reset this process's peak resident set to its current one (Linux: /proc/self/clear_refs);
    returns the current resident set, bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # the peak then still includes what came before
    return current_rss_self()


def load_average() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def git_commit() -> str:
    """Short HEAD commit, marked when forcegp/ has uncommitted changes (they change the results)."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "forcegp"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return head + ("+uncommitted-forcegp-changes" if dirty else "")


def machine_info() -> dict:
    """CPU, RAM, load, versions, JAX backend and devices, git commit, time."""
    import jax
    import numpy as np

    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "ram_total_gib": round(_proc_kib("/proc/meminfo", "MemTotal") / GiB, 2),
        "ram_available_gib": round(mem_available_bytes() / GiB, 2),
        "load_average_1_5_15min": load_average(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [str(d) for d in jax.devices()],
        "git_commit": git_commit(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # Machines of the same name differ (the VMs of this project: 55 to 125 GFLOP/s).
        "gemm_float64_gflops": round(float64_gemm_gflops(), 1),
    }


def float64_gemm_gflops() -> float:
    """gemm_rate of a 2048 x 2048 float64 X^T X, whether or not the caller has switched JAX to
    float64 yet."""
    import jax

    x64 = getattr(jax, "enable_x64", None)
    if x64 is None:  # older JAX
        from jax.experimental import enable_x64 as x64
    with x64(True):
        return gemm_rate(2048, 2048)["gflops"]


def machine_markdown(info: dict) -> str:
    keys = ("nproc", "cpu_model", "ram_total_gib", "load_average_1_5_15min", "jax", "jax_backend")
    keys += ("gemm_float64_gflops", "git_commit", "time_utc")
    return "Machine: " + ", ".join(f"{k}={info[k]}" for k in keys if k in info)


# ----------------------------------------------------------------------------- subprocesses


def run_measured(
    cmd: Sequence, *, env: dict | None = None, timeout: float | None = None, echo: bool = True
) -> dict:
    """Run ``cmd``; return rc (None on timeout), timed_out, wall_s, peak_rss_bytes, stdout, stderr.

    The output goes to temporary files (no pipe can fill up and block the child). On timeout the
    child's whole process group is killed.
    """
    if echo:
        print("$ " + " ".join(shlex.quote(str(c)) for c in cmd), file=sys.stderr, flush=True)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=out,
            stderr=err,
            env={**os.environ, **(env or {})},
            cwd=ROOT,
            start_new_session=True,
        )
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if timeout is not None and time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, 9)
                _, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {
        "rc": None if timed_out else proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux reports KiB
        "stdout": stdout,
        "stderr": stderr,
    }


def emit_result(result: dict) -> None:
    """Print a worker's result (once, at its end) for run_worker to read."""
    print(RESULT_TAG + json.dumps(result, default=_json_default), flush=True)


def run_worker(script: Path, spec: dict, *, env=None, timeout=None, python=None) -> dict:
    """Run ``python script --worker SPEC`` in a fresh process; its result plus wall time and peak RSS."""
    cmd = [python or sys.executable, script, "--worker", json.dumps(spec)]
    res = run_measured(cmd, env=env, timeout=timeout)
    tagged = [ln for ln in res["stdout"].splitlines() if ln.startswith(RESULT_TAG)]
    result = json.loads(tagged[-1][len(RESULT_TAG) :]) if tagged else {}
    out = {
        "subprocess_wall_s": round(res["wall_s"], 3),
        "subprocess_peak_rss_bytes": res["peak_rss_bytes"],
        **result,
    }
    if res["rc"] != 0 or not result:
        out["error"] = f"worker failed (rc={res['rc']}, timed_out={res['timed_out']}): "
        out["error"] += res["stderr"][-3000:]
        print(out["error"], file=sys.stderr, flush=True)
    return out


# ----------------------------------------------------------------------------- JAX


#: The tiny model of the scripts' --quick smoke settings (numbers meaningless).
QUICK_CONFIG = {"n_inducing": 16, "n_features": 4, "width": 8, "depth": 1, "explicit_dim": 4}


def use_quick_compile_cache() -> None:
    """--quick only: the persistent compilation cache of tests/conftest.py, for the subprocesses too.

    Tiny models spend nearly all their time compiling; the cache is keyed by the compiled program,
    so it only saves time. Set through the environment, which the workers inherit, so call it
    before JAX is imported. Measurements proper never use it.
    """
    cache = Path(tempfile.gettempdir()) / f"forcegp-test-jax-cache-{os.getuid()}"
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def enable_x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


def gemm_rate(n_rows: int, k: int, *, repeats: int = 3) -> dict:
    """Best time of a jitted float64 X^T X, X (n_rows, K): the product the posterior fit accumulates.

    gflops counts 2 n_rows K^2 flops (XLA on CPU computes the full product, not a symmetric rank
    update, and so does the fit).
    """
    import jax
    import jax.numpy as jnp
    import numpy as np

    x = jnp.asarray(np.random.default_rng(0).standard_normal((n_rows, k)))
    f = jax.jit(lambda a: a.T @ a)
    best = float(np.min(call_seconds(lambda: jax.block_until_ready(f(x)), repeats)))
    return {"n_rows": n_rows, "k": k, "seconds": best, "gflops": 2 * n_rows * k * k / best / 1e9}


def call_seconds(fn, repeats: int):
    """Seconds of each of ``repeats`` calls of fn() after one untimed call (compilation); fn
    must wait for its own result (jax.block_until_ready)."""
    import numpy as np

    fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    return times


@contextmanager
def count_compilations():
    """Yields a list that collects the names of the XLA executables built while active.

    Listens to JAX's backend-compile event, which also fires when an executable comes from the
    persistent cache: anything in the list means something was traced and lowered again.
    """
    import jax.monitoring

    names: list[str] = []

    def listen(event: str, seconds: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            names.append(str(kwargs.get("fun_name", "?")))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


def thermalize(atoms, temperature_K: float, seed: int) -> None:
    """Maxwell-Boltzmann momenta (ASE >= 3.29 renamed MaxwellBoltzmannDistribution)."""
    import numpy as np

    try:
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as thermalize_momenta
    thermalize_momenta(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))


def noise_record(calibration: dict | None) -> dict:
    """The input-dependent noise's part of a training's calibration record (train_model's
    meta["training"]["calibration"], or `forcegp info --json`'s): gamma (0: constant noise),
    why it was skipped (None: not skipped) and its seconds, None where absent."""
    calibration = calibration or {}
    return {key: calibration.get(key) for key in ("misfit_gamma", "misfit_skipped", "misfit_seconds")}


# ----------------------------------------------------------------------------- output


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.{digits - 1}f}".rstrip("0").rstrip(".")
        return f"{value:.{digits}g}"
    return str(value)


def md_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """Markdown table; columns are (key, header); missing values print as '–'."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def _json_default(obj):
    if hasattr(obj, "tolist"):  # NumPy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj)}")


def results_dir(args) -> Path:
    """--out, else benchmarks/results/, or for --quick the git-ignored benchmarks/results/tmp/ (a
    smoke run must never replace real results)."""
    return Path(args.out) if args.out else RESULTS / "tmp" if args.quick else RESULTS


def cli_run_setup(args, quick_flags: list[str]) -> tuple[Path, list[str], dict]:
    """For the scripts that run forcegp's command line: the results folder (created), the
    extra train flags (--flags, plus quick_flags with --quick) and the machine's facts."""
    import shlex

    out = results_dir(args)
    out.mkdir(parents=True, exist_ok=True)
    flags = shlex.split(args.flags) + (quick_flags if args.quick else [])
    return out, flags, machine_info()


def append_record(lines: Path, row: dict, machine: dict, quick: bool) -> list[dict]:
    """Stamp a result row with the commit, the machine and the time, print it, append it to
    the JSON-lines file ``lines``; returns every row of that file."""
    import json

    row.update(commit=machine["git_commit"], cpu=machine["cpu_model"],
               gflops=machine["gemm_float64_gflops"], time_utc=machine["time_utc"],
               quick=quick)  # fmt: skip
    print(json.dumps(row), flush=True)
    with open(lines, "a") as f:
        f.write(json.dumps(row) + "\n")
    return [json.loads(ln) for ln in lines.read_text().splitlines() if ln.strip()]


def write_results(name: str, payload: dict, markdown: str, out: Path) -> Path:
    """Write <name>.json and <name>.md under ``out``, atomically."""
    out.mkdir(parents=True, exist_ok=True)
    texts = {
        ".json": json.dumps(payload, indent=1, default=_json_default) + "\n",
        ".md": markdown.rstrip() + "\n",
    }
    for suffix, text in texts.items():
        path = out / f"{name}{suffix}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    print(f"wrote {out / name}.json and .md", file=sys.stderr, flush=True)
    return out / f"{name}.json"


def write_table(name: str, args, machine: dict, title: str, intro: str, rows, columns) -> Path:
    """One table of ``rows`` as <name>.md (title, the command that made it, ``intro``, the
    machine) and <name>.json (the rows with the command and machine), under results_dir(args)."""
    command = f"python benchmarks/{Path(sys.argv[0]).name} " + " ".join(sys.argv[1:])
    markdown = "\n".join([f"# {title}", "", f"Command: `{command}`; {intro}", "",
                          machine_markdown(machine), "", md_table(rows, columns)])  # fmt: skip
    payload = {"command": command, "quick": args.quick, "machine": machine, "rows": rows}
    return write_results(name, payload, markdown, results_dir(args))


def config_options(pairs: list[str]) -> dict:
    """--config KEY=VALUE ... as Config keyword arguments (values parsed as JSON, else strings)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--config takes KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test setting (seconds)")
    parser.add_argument(
        "--out", default=None, help="results folder (benchmarks/results/; --quick: its tmp/)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)


class EvidenceCalls:
    """While active, records every forcegp.gp.evidence evaluation (nll_and_grad or
    nll_and_curvature: seconds, NLL per observation) in ``calls`` and every search of
    evidence.maximise (L-BFGS or Newton's method: evaluations, the NLL per observation it ends
    at, seconds) in ``searches``; with ``tol``, sets evidence.TOL_NATS to it meanwhile."""

    WRAPPED = ("nll_and_grad", "nll_and_curvature", "_search", "_newton")

    def __init__(self, tol: float | None = None):
        self.tol, self.calls, self.searches = tol, [], []

    def __enter__(self):
        from forcegp.gp import evidence

        self.real = {name: getattr(evidence, name) for name in (*self.WRAPPED, "TOL_NATS")}

        def counted(real):
            def call(*args):
                t0 = time.perf_counter()
                out = real(*args)
                self.calls.append((time.perf_counter() - t0, float(out[0])))
                return out

            return call

        def search(real):
            def call(*args, **kwargs):
                before, t0 = len(self.calls), time.perf_counter()
                out = real(*args, **kwargs)
                self.searches.append((len(self.calls) - before, out[1], time.perf_counter() - t0))
                return out

            return call

        for name in self.WRAPPED:
            wrap = search if name.startswith("_") else counted
            setattr(evidence, name, wrap(self.real[name]))
        if self.tol is not None:
            evidence.TOL_NATS = self.tol
        return self

    def __exit__(self, *exc):
        from forcegp.gp import evidence

        for name, value in self.real.items():
            setattr(evidence, name, value)

    def seconds(self) -> float:
        return sum(s for s, _ in self.calls)

    def per_search(self) -> dict:
        """Each search's evaluations, end value and seconds, as table cells."""
        return {
            "evaluations": " + ".join(str(n) for n, _, _ in self.searches),
            "search_ends": " / ".join(f"{v:.4g}" for _, v, _ in self.searches),
            "search_seconds": " + ".join(f"{t:.0f}" for _, _, t in self.searches),
        }
