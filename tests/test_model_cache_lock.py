"""The converted-model cache is assembled once when several processes race for it (as Ray workers on one node do).

Four processes call :func:`failtrace.models.loading.assemble_once` on one target at the same moment with a slow
build that logs each time it runs: exactly one build must happen, every process must get the complete folder, and
no temporary folder may be left behind. Without the lock every process would build (the log would have 4 lines).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

_RACER = """
import sys, time
from pathlib import Path
sys.path.insert(0, {src!r})
from failtrace.models.loading import assemble_once

root = Path(sys.argv[1])
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.005)

def build(tmp):
    with open(root / "builds.log", "a") as fh:
        fh.write("built\\n")
    time.sleep(0.5)  # a slow conversion: the others arrive while it runs
    (tmp / "config.json").write_text("{{}}")
    (tmp / "model.safetensors").write_text("weights")

out = assemble_once(root / "models" / "m-v2", build)
print((out / "model.safetensors").read_text())
"""


def test_racing_processes_build_the_cache_once(tmp_path: Path) -> None:
    import time

    script = tmp_path / "racer.py"
    script.write_text(_RACER.format(src=SRC))
    start = time.time() + 3.0
    env = {**os.environ, "PYTHONPATH": SRC}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path), str(start)], stdout=subprocess.PIPE,
                              text=True, env=env) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert outs == ["weights"] * 4
    assert (tmp_path / "builds.log").read_text().splitlines() == ["built"]
    assert [p.name for p in (tmp_path / "models").iterdir() if not p.name.startswith(".m-v2.lock")] == ["m-v2"]
