"""py-spy sampling of the edge (`entryguard up`) and the agent while a load runs."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

_LINE = re.compile(r"\s*\(([^()]*?):\d+\)$")


def available() -> bool:
    return shutil.which("py-spy") is not None or Path(_pyspy()).exists()


def _pyspy() -> str:
    import sys

    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else "py-spy"


def record(
    pids: dict[str, int],
    seconds: float,
    out_dir: Path,
    label: str,
    load: Callable[[], Any],
    native: bool = False,
) -> dict[str, Path]:
    """Sample each pid for `seconds` (raw collapsed stacks) while `load()` runs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    procs: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}
    for name, pid in pids.items():
        path = out_dir / f"{label}-{name}.txt"
        args = [_pyspy(), "record", "--pid", str(pid), "--duration", f"{max(1, round(seconds))}"]
        args += ["--rate", "200", "--format", "raw", "--output", str(path)]
        args += ["--native"] if native else ["--nonblocking"]
        procs[name] = (
            subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            path,
        )
    try:
        load()
    except BaseException:
        for p, _ in procs.values():
            p.kill()
        raise
    finally:
        for p, _ in procs.values():
            try:
                p.wait(seconds + 30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
    return {name: path for name, (_, path) in procs.items() if path.exists()}


def _frame_name(frame: str) -> str:
    """'send_data (entryguard/mux/connection.py:123)' -> 'send_data (mux/connection.py)'."""
    m = _LINE.search(frame)
    func = frame[: m.start()] if m else frame
    where = ""
    if m:
        file = m.group(1)
        for marker in ("site-packages/", "src/", "lib/python3.11/"):
            if marker in file:
                file = file.split(marker, 1)[1]
                break
        where = f" ({file})"
    return func.strip() + where


def summarize(path: Path, top: int = 12) -> dict[str, Any]:
    """Own-time and inclusive-time shares from py-spy's raw (collapsed) output."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_frame_name(f) for f in stack.split(";")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n

    def share(c: Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "own": share(own), "inclusive": share(incl)}
