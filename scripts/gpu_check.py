"""`make gpu-check`: one script for a GPU machine, under 8 minutes on one modern GPU, ending in a table of ratios.

    python3 scripts/gpu_check.py            # the machine's own python3 (torch, timm, ... already there)
    .venv/bin/python scripts/gpu_check.py --cpu --quick     # a dry run of this script where there is no GPU

1. What is missing from that python3 (albumentations, ensemble-boxes, pytest, ...) is installed offline from
   gpu-wheels/ (`make gpu-wheels`, run where a package registry is) into a temporary folder on PYTHONPATH; the
   package itself is imported from this tree. Nothing is downloaded and nothing under the system Python changes.
2. The GPU: name, compute capability, memory, and the precision train.precision=auto picks on it.
3. `pytest -m gpu` (tests/test_gpu.py).
4. `pipeline bench` on CUDA at each precision the card runs natively (fp32, fp16; bf16 from 8.0): bare loop vs the
   pipeline's loop, the loader from files and from the decoded cache vs the model's rate, TTA and ensembling.
5. A short real run: `pipeline demo` on the embedded digits (prepare, train, TTA predict, ensemble, submit).

Each step's full output is in gpu-check/<step>.log (or $OUT/gpu-check when OUT is set, as on a lent machine).
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "gpu-wheels"
SITE = Path(tempfile.gettempdir()) / "pipeline-gpu-site"
LOGS = Path(os.environ["OUT"]) / "gpu-check" if os.environ.get("OUT") else ROOT / "gpu-check"
WORK = Path(tempfile.gettempdir()) / "pipeline-gpu-check"
STEP_LIMITS = {"pytest -m gpu": 240, "bench": 120, "demo": 150}  # x4 for a --quick dry run on a CPU  # seconds; the whole check stays under 8 minutes
IMPORTS = {"albumentations": "albumentations", "ensemble_boxes": "ensemble-boxes", "iterstrat":
           "iterative-stratification", "nbformat": "nbformat", "pytest": "pytest", "timm": "timm", "typer": "typer",
           "sklearn": "scikit-learn", "pandas": "pandas", "pyarrow": "pyarrow", "cv2": "opencv", "yaml": "pyyaml"}


def wheel_dist(path: Path) -> str:
    return re.sub(r"[-_.]+", "-", path.name.split("-")[0]).lower()


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def prepare_env() -> dict[str, str]:
    """PYTHONPATH with this tree and, where the machine lacks them, the carried wheels installed offline."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    wheels = [w for w in sorted(WHEELS.glob("*.whl")) if not installed(wheel_dist(w))]
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)], check=True)
        print(f"installed offline from {WHEELS.name}/: {', '.join(wheel_dist(w) for w in wheels)}")
    paths = [str(ROOT), *([str(SITE)] if SITE.is_dir() else []), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    probe = "import importlib.util as u, sys; print(','.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    missing = subprocess.run([sys.executable, "-c", probe, *IMPORTS], env=env, capture_output=True,
                             text=True).stdout.strip()
    if missing:
        names = [IMPORTS[m] for m in missing.split(",")]
        sys.exit(f"gpu-check: {', '.join(names)} missing from {sys.executable} and not in {WHEELS}/; run `make "
                 "gpu-wheels` where a package registry is reachable and bring gpu-wheels/ along")
    return env


def gpu_info() -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from pipeline.core.precision import choose_precision

    if not torch.cuda.is_available():
        if "--cpu" in sys.argv:  # a dry run of the script itself, on a machine without a GPU
            return {"name": "CPU (dry run)", "capability": (0, 0), "memory_gib": 0, "count": 0,
                    "torch": torch.__version__, "cuda": None, "auto": "float32"}
        sys.exit("gpu-check: no CUDA device visible to torch (torch.cuda.is_available() is False)")

    props = torch.cuda.get_device_properties(0)
    cc = torch.cuda.get_device_capability(0)
    return {"name": props.name, "capability": cc, "memory_gib": props.total_memory / 2**30,
            "count": torch.cuda.device_count(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "auto": str(choose_precision("auto", "cuda", cc)).removeprefix("torch.")}


def step(name: str, args: list[str], env: dict, limit: int) -> tuple[bool, str, float]:
    """Run one step, its output to LOGS/<name>.log; (passed, output, seconds)."""
    started = time.time()
    try:
        result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        out, ok = result.stdout + result.stderr, result.returncode == 0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        out, ok = out + f"\n[gpu-check: stopped after {limit} s]", False
    seconds = time.time() - started
    LOGS.mkdir(parents=True, exist_ok=True)
    (LOGS / f"{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}.log").write_text(out)
    print(f"{'ok  ' if ok else 'FAIL'} {name} ({seconds:.0f} s)", flush=True)
    if not ok:
        print("\n".join("    " + line for line in out.strip().splitlines()[-25:]), flush=True)
    return ok, out, seconds


def bench_rows(out: str) -> list[list[str]]:
    """The bench table's rows as [part, batch, rate, ratio, peak MB] (pipeline.workflows.bench.print_table: the first column
    left-justified, the others right-justified under their header, so a blank cell is found by position)."""
    lines = out.splitlines()
    header = next((line for line in lines if line.startswith("part") and "ratio" in line), None)
    if header is None:
        return []
    ends = [header.index(name) + len(name) for name in ("batch", "rate", "ratio")]
    rows = []
    for line in (line for line in lines if line.startswith("(")):
        match = re.match(r"(.*?)\s{2,}(\S*)$", line[:ends[0]])
        part, batch = (match.group(1), match.group(2)) if match else (line[:ends[0]].strip(), "")
        rows.append([part.strip(), batch, line[ends[0]:ends[1]].strip(), line[ends[1]:ends[2]].strip(),
                     line[ends[2]:].strip()])
    return rows


def main() -> None:
    started = time.time()
    env = prepare_env()
    info = gpu_info()
    print(f"GPU: {info['name']} x{info['count']}, compute capability {info['capability'][0]}.{info['capability'][1]}, "
          f"{info['memory_gib']:.0f} GiB; torch {info['torch']} (CUDA {info['cuda']}); train.precision=auto -> "
          f"{info['auto']}", flush=True)
    py, summary, quick = sys.executable, [], "--quick" in sys.argv

    ok, out, seconds = step("pytest -m gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
                                              "tests/test_gpu.py"], env, STEP_LIMITS["pytest -m gpu"])
    counts = re.findall(r"(\d+) (passed|failed|skipped|error)", out)
    summary.append(["pytest -m gpu", ", ".join(f"{n} {w}" for n, w in counts) or "no summary", "", f"{seconds:.0f} s"])

    precisions = ["fp32"] if info["count"] == 0 else ["fp32", "fp16"] + (["bf16"] if info["capability"] >= (8, 0)
                                                                         else [])
    for p in precisions:
        ok, out, seconds = step(f"bench {p}", [py, "-m", "pipeline", "bench", "--config", "configs/bench-demo.yaml",
                                               "--steps", "4" if quick else "40", "--ensemble",
                                               "2x2000x176" if quick else "20x20000x176", "--set",
                                               f"train.precision={p}", "--set", f"runs_dir={WORK}/runs"],
                                env, STEP_LIMITS["bench"] * (4 if quick else 1))
        for part, batch, rate, ratio, _ in bench_rows(out):
            if part.startswith(("(a)", "(b)", "(c)")) or (p == precisions[0] and part.startswith(("(d)", "(e)"))):
                summary.append([f"bench {p}: {part}", f"{rate}" + (f" (batch {batch})" if batch else ""), ratio, ""])
        if not ok:
            summary.append([f"bench {p}", "FAILED", "", f"{seconds:.0f} s"])

    ok, out, seconds = step("demo", [py, "-m", "pipeline", "demo", "--runs-dir", f"{WORK}/demo-runs", "--root",
                                     f"{WORK}/demo-digits", *(["--set", "train.epochs=1"] if quick else [])],
                            env, STEP_LIMITS["demo"] * (4 if quick else 1))
    cv = re.findall(r"CV \w+ ([0-9.]+) ±", out)
    summary.append(["demo (prepare, train, predict, ensemble, submit)", "ok" if ok else "FAILED",
                    f"CV {', '.join(cv)}" if cv else "", f"{seconds:.0f} s"])

    widths = [max(len(r[i]) for r in summary + [["step", "result", "ratio", "time"]]) for i in range(4)]
    print(f"\ngpu-check on {info['name']} ({time.time() - started:.0f} s); logs in {LOGS}")
    for row in [["step", "result", "ratio", "time"], *summary]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
    if any(r[1] == "FAILED" or "failed" in r[1] or "error" in r[1] for r in summary):
        sys.exit(1)


if __name__ == "__main__":
    main()
