"""Run every benchmark and append its output, with the date and the machine, to RESULTS.md."""

from __future__ import annotations

import datetime
import subprocess
import sys
from pathlib import Path

from common import machine

HERE = Path(__file__).parent
SCRIPTS = [
    "decode_speed.py",
    "prefill_speed.py",
    "scaling.py",
    "kernel_speed.py",  # not kernels.py: in sys.path[0] it hid the `kernels` package transformers imports
    "startup.py",
    "timing_only.py",
    "fabric_speed.py",
    "serving.py",
    "precision_table.py",
    "precision_error.py",
    "fidelity.py",
    "distributed.py",
]


def main() -> None:
    sections = []
    for script in SCRIPTS:
        if not (HERE / script).exists():
            continue
        print(f"== {script}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True, cwd=HERE)
        output = done.stdout + (f"\n(stderr)\n{done.stderr[-2000:]}" if done.returncode else "")
        print(output, flush=True)
        sections.append(f"### {script}\n\n```\n{output.strip()}\n```\n")
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    with (HERE / "RESULTS.md").open("a") as f:
        f.write(f"\n## make bench, {stamp}, {machine()}\n\n" + "\n".join(sections))
    print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
