"""Script mode: run the admin's ``apply``/``revoke`` scripts for queued commands, in order.

The agent long-polls the control plane for its next command (claimed by the server
before it is handed out, so it runs at most once), runs it, reports the result, and
only then asks for the next one: commands run strictly in queue order, one at a time.

What a command can make the agent do is deliberately small:

- It names a directory and an action; the agent runs ``<dir>/apply.sh`` or
  ``<dir>/revoke.sh`` (``.ps1`` through PowerShell on Windows) with the CIDR and the
  description as two arguments of an argv list. No shell ever parses them, so a
  description like ``'; touch X; $(touch X)`` reaches the script as plain text.
- The script's real path (symlinks resolved) must lie under one of the local
  ``scripts.allowed_dirs``; anything else is refused and reported, never run. The
  resolved path is what gets executed, so swapping a symlink after the check gains
  nothing.
- ``scripts.timeout`` bounds a run; on expiry the script's whole process group (its
  session on POSIX, its process tree on Windows) is killed, children included.

Script mode shares nothing with tunnel mode but the control-plane client: a failing or
hanging script never touches tunnel streams, and an edge outage never stops commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entryguard.agent.config import AgentConfig
from entryguard.agent.control_client import ControlClient, ControlPlaneError
from entryguard.backoff import Backoff
from entryguard.clock import SYSTEM, Clock
from entryguard.errors import Forbidden
from entryguard.net import CidrError, parse_cidr

log = logging.getLogger("entryguard.agent.scripts")

OUTPUT_LIMIT = 64 * 1024
"""Bytes of output (stdout and stderr together) reported per run."""
POLL_WAIT = 25.0
"""Seconds the control plane holds a long-poll open when there is nothing to run."""
BACKOFF_MAX = 30.0
TERM_GRACE = 2.0
"""After SIGTERM, how long a timed-out script gets before SIGKILL."""
DRAIN_GRACE = 1.0
"""After the script exits, how long to keep reading output an escaped process holds open."""
SHUTDOWN_GRACE = 10.0
"""On SIGTERM of the agent, how long a running script may still take."""
REPORT_GIVE_UP = 5.0
"""On shutdown, how long to keep trying to report the last result."""
WINDOWS = sys.platform == "win32"
ACTIONS = ("apply", "revoke")


class CommandRefused(Forbidden):
    """The command cannot be run here; the message says why and how to fix it."""

    code = "command_refused"


@dataclass(frozen=True)
class Command:
    id: int
    resource: str
    script_dir: str
    action: str
    cidr: str
    description: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Command:
        return cls(
            id=int(data["id"]),
            resource=str(data.get("resource") or ""),
            script_dir=str(data.get("script_dir") or ""),
            action=str(data.get("action") or ""),
            cidr=str(data.get("cidr") or ""),
            description=str(data.get("description") or ""),
        )


@dataclass(frozen=True)
class Outcome:
    exit_code: int | None
    duration_ms: int
    output: str
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.error is None


def script_name(action: str) -> str:
    return f"{action}.ps1" if WINDOWS else f"{action}.sh"


def resolve_script(cmd: Command, allowed_dirs: list[str]) -> Path:
    """The real path of the command's script, or :class:`CommandRefused`."""
    if cmd.action not in ACTIONS:
        raise CommandRefused(f"unknown action {cmd.action!r} (expected apply or revoke)")
    try:
        parse_cidr(cmd.cidr, allow_any=True)
    except CidrError as exc:
        raise CommandRefused(f"invalid CIDR {cmd.cidr!r}: {exc}") from None
    if "\x00" in cmd.description:
        raise CommandRefused("the description contains a NUL character")
    directory = Path(cmd.script_dir)
    if not directory.is_absolute():
        raise CommandRefused(f"script directory {cmd.script_dir!r} is not an absolute path")
    script = directory / script_name(cmd.action)
    roots = [Path(d).resolve() for d in allowed_dirs]
    try:
        real = script.resolve(strict=True)
    except FileNotFoundError:
        real = None
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise CommandRefused(f"cannot resolve {script}: {exc}") from None
    # Refuse what lies outside before saying whether it exists: no probing for files.
    shown = real or script.resolve()
    if not any(shown.is_relative_to(root) for root in roots):
        where = ", ".join(str(r) for r in roots) or "none configured"
        via = f" (resolves to {shown})" if shown != script else ""
        raise CommandRefused(
            f"refused: {script}{via} is outside scripts.allowed_dirs ({where}); "
            "add its directory to scripts.allowed_dirs in the agent's config to allow it"
        )
    if real is None or not real.is_file():
        raise CommandRefused(f"no script {script}: create it (see examples/scripts/)")
    if not WINDOWS and not os.access(real, os.X_OK):
        raise CommandRefused(f"{real} is not executable: run `chmod +x {real}`")
    return real


def script_argv(real: Path, cidr: str, description: str) -> list[str]:
    if WINDOWS:
        return [
            "powershell",
            "-NoProfile",
            "-NonInteractive",
            "-File",
            str(real),
            cidr,
            description,
        ]
    return [str(real), cidr, description]


def script_env(cmd: Command) -> dict[str, str]:
    return {
        **os.environ,
        "EG_ACTION": cmd.action,
        "EG_CIDR": cmd.cidr,
        "EG_DESCRIPTION": cmd.description,
        "EG_RESOURCE": cmd.resource,
        "EG_COMMAND_ID": str(cmd.id),
    }


class OutputCapture:
    """Keeps the first :data:`OUTPUT_LIMIT` bytes of a pipe, counts the rest, until EOF."""

    def __init__(self, fd: int, limit: int = OUTPUT_LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self.head = bytearray()
        self.total = 0
        self.eof = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        if WINDOWS:  # the proactor loop cannot watch an anonymous pipe: read in a thread
            self._loop.run_in_executor(None, self._read_blocking)
        else:
            os.set_blocking(fd, False)
            self._loop.add_reader(fd, self._readable)

    def _feed(self, data: bytes) -> None:
        self.total += len(data)
        room = self.limit - len(self.head)
        if room > 0:
            self.head += data[:room]

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._feed(data)
        else:
            self._loop.remove_reader(self.fd)
            self.eof.set()

    def _read_blocking(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                data = b""
            if not data:
                self._loop.call_soon_threadsafe(self.eof.set)
                return
            self._loop.call_soon_threadsafe(self._feed, data)

    async def wait_eof(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.eof.wait(), timeout)
        return self.eof.is_set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not WINDOWS:
            self._loop.remove_reader(self.fd)
        if not WINDOWS or self.eof.is_set():  # the reader thread closes nothing under us
            os.close(self.fd)

    def text(self) -> str:
        if self.total <= self.limit:
            return self.head.decode("utf-8", "replace")
        marker = f"\n[output truncated: {self.total} bytes, the first 64 KiB kept]"
        keep = self.limit - len(marker.encode())
        # Decoding with "replace" can grow invalid bytes; cut again on the encoded form.
        text = self.head[:keep].decode("utf-8", "replace").encode()[:keep]
        return text.decode("utf-8", "ignore") + marker


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Signal everything the script started; on Windows, end its whole process tree."""
    if WINDOWS:
        subprocess.run(
            ["taskkill", "/T", "/F", "/PID", str(proc.pid)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        return
    # The script leads its own session (start_new_session), so its pid is the group id
    # of everything it forked. It is only ever signalled while the script is alive or
    # an unreaped zombie (see _wait_exit), so the id cannot have been reused.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _wait_exit(proc: subprocess.Popen[bytes]) -> None:
    """Block until the script exits, leaving it unreaped (a zombie) where possible."""
    if WINDOWS or not hasattr(os, "waitid"):
        proc.wait()
        return
    while True:
        try:
            os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
            return
        except InterruptedError:
            continue
        except ChildProcessError:  # already reaped
            return


def _spawn(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start the script with stdout and stderr on one pipe; returns (process, read end)."""
    # Its own session (POSIX) or process group (Windows): what a timeout kills.
    group: dict[str, Any] = (
        {"creationflags": getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)}
        if WINDOWS
        else {"start_new_session": True}
    )
    read_fd, write_fd = os.pipe()
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=write_fd,
            stderr=write_fd,
            env=env,
            cwd=cwd,
            close_fds=True,
            **group,
        )
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    return proc, read_fd


class ScriptRunner:
    def __init__(self, cfg: AgentConfig, control: ControlClient, clock: Clock = SYSTEM) -> None:
        self.clock = clock  # times scripts and bounds report retries (monotonic)
        self.control = control
        self.allowed_dirs = list(cfg.scripts.allowed_dirs)
        self.timeout = float(cfg.scripts.timeout_seconds)
        self._current: subprocess.Popen[bytes] | None = None
        self._stop_reason: str | None = None

    async def run(self) -> None:
        log.info(
            "[scripts] waiting for commands (allowed dirs: %s; timeout %.0f s)",
            ", ".join(self.allowed_dirs) or "none",
            self.timeout,
        )
        for d in _missing(self.allowed_dirs):
            log.warning("[scripts] allowed dir %s does not exist", d)
        backoff = Backoff(0.5, BACKOFF_MAX)
        while True:
            try:
                data = await self.control.next_command(POLL_WAIT)
            except ControlPlaneError as exc:
                delay = backoff.next()
                log.warning("[scripts] cannot fetch commands: %s (retrying in %.1f s)", exc, delay)
                await asyncio.sleep(delay)
                continue
            except Exception:
                log.exception("[scripts] unexpected error while fetching commands")
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            if data is not None:
                await self.handle(data)

    async def handle(self, data: dict[str, Any]) -> None:
        try:
            cmd = Command.from_json(data)
        except (KeyError, TypeError, ValueError):
            log.error("[scripts] ignoring a malformed command from the control plane: %r", data)
            return
        task = asyncio.create_task(self.execute(cmd))
        try:
            outcome = await asyncio.shield(task)
        except asyncio.CancelledError:
            # The agent is stopping: let the script finish (bounded), then report.
            log.info(
                "[scripts] stopping: command %d (%s) may run %.0f s more",
                cmd.id,
                cmd.action,
                SHUTDOWN_GRACE,
            )
            done, _ = await asyncio.wait({task}, timeout=SHUTDOWN_GRACE)
            if not done:
                self._stop_reason = "eg-agent was stopping"
                self.kill_current()
            outcome = await task
            await self.report(cmd, outcome, give_up_after=REPORT_GIVE_UP)
            raise
        try:
            await self.report(cmd, outcome)
        except asyncio.CancelledError:
            # Reporting twice is harmless: the control plane ignores a repeated result.
            await self.report(cmd, outcome, give_up_after=REPORT_GIVE_UP)
            raise

    async def execute(self, cmd: Command) -> Outcome:
        """Run one command; never raises (a refusal or a crash becomes a failed outcome)."""
        t0 = self.clock.monotonic()

        def ms() -> int:
            return int((self.clock.monotonic() - t0) * 1000)

        try:
            real = resolve_script(cmd, self.allowed_dirs)
        except CommandRefused as exc:
            log.warning("[scripts] command %d (%s %s): %s", cmd.id, cmd.action, cmd.cidr, exc)
            return Outcome(None, ms(), "", str(exc))
        log.info(
            "[scripts] command %d: %s %s on %s (%r)",
            cmd.id,
            cmd.action,
            cmd.cidr,
            cmd.resource,
            cmd.description,
        )
        try:
            return await self._run(real, cmd, t0)
        except OSError as exc:
            return Outcome(None, ms(), "", f"could not start {real}: {exc.strerror or exc}")

    async def _run(self, real: Path, cmd: Command, t0: float) -> Outcome:
        argv = script_argv(real, cmd.cidr, cmd.description)
        proc, read_fd = _spawn(argv, script_env(cmd), real.parent)
        self._current, self._stop_reason = proc, None
        capture = OutputCapture(read_fd)
        try:
            try:
                await asyncio.wait_for(asyncio.to_thread(_wait_exit, proc), self.timeout)
            except TimeoutError:
                self._stop_reason = (
                    f"timed out after {self.timeout:g} s: killed the script and its process group"
                )
                await self._terminate(proc)
            # Whatever the script left running in its group goes with it, so no stray
            # process holds the output pipe or outlives the command.
            _signal_group(proc, signal.SIGKILL if not WINDOWS else signal.SIGTERM)
            self._current = None  # about to be reaped: never signal its pid again
            rc = await asyncio.to_thread(proc.wait)
            error = self._stop_reason
            # A process that left the group (setsid) may still hold the pipe open.
            complete = await capture.wait_eof(DRAIN_GRACE)
        finally:
            self._current = None
            capture.close()
        duration = int((self.clock.monotonic() - t0) * 1000)
        if error is None and rc < 0:
            error = f"the script was killed by signal {_signal_name(-rc)}"
        exit_code = rc if rc >= 0 and error is None else None
        output = capture.text()
        if not complete:
            output += "\n[eg-agent] a process the script started kept its output open; not shown"
        outcome = Outcome(exit_code, duration, output, error)
        log.log(
            logging.INFO if outcome.ok else logging.WARNING,
            "[scripts] command %d: %s %s %s in %d ms",
            cmd.id,
            cmd.action,
            cmd.cidr,
            f"exit {exit_code}" if error is None else f"failed ({error})",
            duration,
        )
        return outcome

    async def _terminate(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM the group, then SIGKILL what is left after a grace period."""
        _signal_group(proc, signal.SIGTERM)
        if WINDOWS:
            return  # taskkill /F already ended the tree
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(_wait_exit, proc), TERM_GRACE)
        _signal_group(proc, signal.SIGKILL)
        await asyncio.to_thread(_wait_exit, proc)

    def kill_current(self) -> None:
        proc = self._current
        if proc is not None:
            _signal_group(proc, signal.SIGKILL if not WINDOWS else signal.SIGTERM)

    async def report(
        self, cmd: Command, outcome: Outcome, give_up_after: float | None = None
    ) -> None:
        """Send the result, retrying while the control plane is unreachable."""
        deadline = None if give_up_after is None else self.clock.monotonic() + give_up_after
        backoff = Backoff(0.5, BACKOFF_MAX)
        while True:
            try:
                await self.control.report_command(
                    cmd.id,
                    exit_code=outcome.exit_code,
                    duration_ms=outcome.duration_ms,
                    output=outcome.output,
                    error=outcome.error,
                )
                return
            except ControlPlaneError as exc:
                if not exc.transient:
                    log.error("[scripts] command %d: the result was refused: %s", cmd.id, exc)
                    return
                delay = backoff.next()
                if deadline is not None and self.clock.monotonic() + delay > deadline:
                    log.error(
                        "[scripts] command %d: could not report the result (%s); it stays "
                        "'running' on the control plane",
                        cmd.id,
                        exc,
                    )
                    return
                log.warning(
                    "[scripts] command %d: cannot report the result: %s (retrying in %.1f s)",
                    cmd.id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)


def _missing(dirs: list[str]) -> list[str]:
    return [d for d in dirs if not Path(d).is_dir()]


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return str(num)


async def run_scripts(cfg: AgentConfig, control: ControlClient) -> None:
    """Script mode's task in `eg-agent run` (see :mod:`entryguard.agent.runtime`)."""
    await ScriptRunner(cfg, control).run()
