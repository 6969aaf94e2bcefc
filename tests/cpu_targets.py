"""`make test-targets`: the kernel and quantization tests, compiled for several x86-64 CPU
targets on this one host, and a check that every target computes the same bits.

For each target numba compiles with NUMBA_CPU_NAME (the target's scheduling model) and
NUMBA_CPU_FEATURES (its instruction sets), each into its own cache folder
(`.cache/numba-targets/NAME`). A host can only run instructions it has: features of a
target that this host lacks are switched off for that run, and the output says which (on
a host without AVX-512, `skylake-avx512` runs as its AVX2 subset). `generic` is plain
x86-64 (SSE2): the path a host without AVX2 takes.

Each run also writes the hashes of the kernels' outputs on fixed inputs
(tests/device/test_numerics.py::test_fingerprint) and of a tiny model's logits
(tests/models/test_numerics_model.py); the script fails unless every target wrote the same
hashes. The promise behind it is in docs/numerics.md.

    python tests/cpu_targets.py [TARGET ...]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARALLEL = 2  # targets run at once (this project's machines have two cores)
TESTS = [
    "tests/device/test_kernels.py",
    "tests/device/test_quant.py",
    "tests/device/test_q8_act.py",
    "tests/device/test_numerics.py",
    "tests/models/test_numerics_model.py",
]

# LLVM's feature names for each target's instruction sets (from LLVM's X86 processor table,
# the ones that change generated code); a target is all of the sets before it plus its own.
_BASE = {"64bit", "cmov", "cx8", "fxsr", "mmx", "sse", "sse2"}  # every x86-64 CPU
_V2 = _BASE | {"cx16", "popcnt", "sahf", "sse3", "ssse3", "sse4.1", "sse4.2", "crc32"}
_HASWELL = _V2 | {"avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave", "aes", "pclmul"}
_SKX = (
    _HASWELL
    | {"adx", "rdseed", "prfchw", "clflushopt", "xsavec", "xsaves", "clwb", "pku"}
    | {
        "avx512f",
        "avx512cd",
        "avx512bw",
        "avx512dq",
        "avx512vl",
    }
)
_ICELAKE_ON = {
    "avx512vnni",
    "avx512vbmi",
    "avx512vbmi2",
    "avx512bitalg",
    "avx512vpopcntdq",
    "avx512ifma",
    "gfni",
    "vaes",
    "vpclmulqdq",
    "sha",
    "rdpid",
}
TARGETS: dict[str, set[str] | None] = {
    "generic": None,  # numba's own default for it: no feature string, plain x86-64
    "haswell": _HASWELL,
    "skylake-avx512": _SKX,
    "sapphirerapids": _SKX
    | _ICELAKE_ON
    | {"avx512bf16", "avx512fp16", "avxvnni", "amx-tile", "amx-int8", "amx-bf16", "serialize", "movdiri"},
    "znver4": _SKX | _ICELAKE_ON | {"avx512bf16", "sse4a", "clzero", "mwaitx", "rdpru", "wbnoinvd"},
}


def _host_features() -> dict[str, bool]:
    from llvmlite import binding

    return dict(binding.get_host_cpu_features())


def features_for(target: str, host: dict[str, bool]) -> tuple[str, list[str]]:
    """NUMBA_CPU_FEATURES for `target` on this host, and the target's features the host lacks."""
    wanted = TARGETS[target]
    if wanted is None:
        return "", []
    missing = sorted(f for f in wanted if not host.get(f, False))
    on = wanted - set(missing)
    return ",".join(("+" if f in on else "-") + f for f in sorted(host)), missing


def start(target: str, host: dict[str, bool], prints: Path, log: Path) -> tuple[subprocess.Popen, str]:
    features, missing = features_for(target, host)
    env = {
        **os.environ,
        "NUMBA_CPU_NAME": target,
        "NUMBA_CPU_FEATURES": features,
        "NUMBA_CACHE_DIR": str(ROOT / ".cache" / "numba-targets" / target),
        "NUMBA_NUM_THREADS": "1",  # two targets at a time, one core each
        "TILESIM_FINGERPRINTS": str(prints / target),
        "TILESIM_QUICK": "1",
    }
    note = f" (without {', '.join(missing)}: this host lacks them)" if missing else ""
    with open(log, "w") as out:
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TESTS]
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT), note


def compare(prints: Path, targets: list[str]) -> list[str]:
    """Where a target's hashes differ from the first target's: 'file: name' per difference."""
    base = targets[0]
    expected = ("kernels.json", "models.json")
    problems = [f"{t} wrote no {name}" for t in targets for name in expected if not (prints / t / name).is_file()]
    for path in sorted((prints / base).glob("*.json")):
        want = json.loads(path.read_text())
        for other in targets[1:]:
            theirs = prints / other / path.name
            got = json.loads(theirs.read_text()) if theirs.is_file() else {}
            problems += [
                f"{path.stem}: {name} differs on {other} from {base}" for name in want if got.get(name) != want[name]
            ]
    return problems


def main(argv: list[str]) -> int:
    targets = argv or list(TARGETS)
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        print(f"unknown target {', '.join(unknown)}; known: {', '.join(TARGETS)}", file=sys.stderr)
        return 2
    host = _host_features()
    prints, logs = ROOT / ".cache" / "fingerprints", ROOT / ".cache" / "target-logs"
    logs.mkdir(parents=True, exist_ok=True)
    results = {}
    pending = list(targets)
    while pending:
        batch, pending = pending[:PARALLEL], pending[PARALLEL:]
        running = {}
        t0 = time.perf_counter()
        for target in batch:
            for old in (prints / target).glob("*.json"):
                old.unlink()
            running[target] = start(target, host, prints, logs / f"{target}.log")
        for target, (proc, note) in running.items():
            ok = proc.wait() == 0
            results[target] = (ok, time.perf_counter() - t0)
            text = (logs / f"{target}.log").read_text()
            summary = text.strip().splitlines()[-1] if text.strip() else "no output"
            print(f"== {target}{note}: {summary}", flush=True)
            if not ok:
                print(text)
    problems = compare(prints, targets)
    for target, (ok, seconds) in results.items():
        print(f"{target:16s} {'passed' if ok else 'FAILED'} ({seconds:.0f} s)")
    for p in problems:
        print(p)
    if not problems:
        counted = sum(len(json.loads(p.read_text())) for p in (prints / targets[0]).glob("*.json"))
        print(f"every target computed the same bits: {counted} outputs hashed on {len(targets)} targets")
    return 0 if all(ok for ok, _ in results.values()) and not problems else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
