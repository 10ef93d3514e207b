"""Detached local services (the MLflow server, the team mode's S3 server): start one in its own
process group with its PID and log in a folder, wait until it answers, stop it again.

PostgreSQL is not started this way: ``pg_ctl`` detaches and records the server itself.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.io import write_text_atomic


def tls_context(ca: str | Path | None = None, insecure: bool = False):
    """An SSL context for ``https://`` checks: trusting ``ca`` (a PEM file) besides the system's
    store, or (``insecure``, MLflow's ``MLFLOW_TRACKING_INSECURE_TLS``) verifying nothing."""
    import ssl

    if insecure:
        return ssl._create_unverified_context()  # what the user asked for, as MLflow's client does
    return ssl.create_default_context(cafile=str(ca) if ca else None)


def failure(url: str, timeout_s: float = 2.0, ca: str | Path | None = None, insecure: bool = False) -> str | None:
    """Why a GET of ``url`` does not answer HTTP 200 (None when it does): :data:`UNTRUSTED` and
    the reason when its TLS certificate is not trusted, else a short cause."""
    import ssl

    try:
        context = tls_context(ca, insecure) if url.startswith("https://") else None
    except OSError as error:  # a missing or unreadable CA file (ssl.SSLError is an OSError too)
        return f"{BAD_CA} {ca} ({getattr(error, 'strerror', None) or error})"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except urllib.error.HTTPError as error:
        return f"HTTP {error.code}"
    except urllib.error.URLError as error:
        if isinstance(error.reason, ssl.SSLCertVerificationError):
            return f"{UNTRUSTED} ({error.reason.verify_message})"
        return str(error.reason)
    except OSError as error:
        return str(error)


#: How :func:`failure` begins when a server's certificate is not trusted, and when the CA file
#: to trust cannot be used.
UNTRUSTED = "certificate not trusted"
BAD_CA = "cannot use the CA file"


def answers(url: str, timeout_s: float = 2.0, ca: str | Path | None = None) -> bool:
    """Whether ``url`` answers a GET with HTTP 200 (over TLS: with a certificate ``ca`` or the
    system trusts)."""
    return failure(url, timeout_s, ca) is None


def spawn(
    name: str,
    command: Sequence[str],
    folder: Path,
    ready: Callable[[], bool],
    env: Mapping[str, str] | None = None,
    wait_s: float = 90.0,
    inherit_env: bool = True,
) -> int:
    """Start ``command`` detached (its own session, so it outlives the caller), its output in
    ``folder/<name>.log`` (0600) and in ``folder/<name>.pid`` its PID, start time and command
    line (what :func:`stop` checks before it signals); return once ``ready()`` is true.

    ``env`` is added to this process's environment for the service only (``inherit_env=False``:
    it is the whole environment): secrets passed this way never appear on a command line
    (``ps``) or in a log.
    """
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / f"{name}.log"
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        process = subprocess.Popen(
            list(command),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**(os.environ if inherit_env else {}), **(env or {})},
        )
    record = {"pid": process.pid, "start": start_time(process.pid), "command": [str(part) for part in command]}
    write_text_atomic(folder / f"{name}.pid", json.dumps(record) + "\n")
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (folder / f"{name}.pid").unlink(missing_ok=True)
            raise PipelineError(f"{name} exited with status {process.returncode}: " + " | ".join(log_tail(log_path)))
        if ready():
            return process.pid
        time.sleep(0.3)
    stop(name, folder)
    raise PipelineError(f"{name} did not answer within {wait_s:.0f} s; see {log_path}")


def cause(text: str, fallback: str = "") -> str:
    """The line of a tool's output or log that says what went wrong: the last one with
    ``FATAL``, ``ERROR`` or ``Error:``, else the last line (else ``fallback``)."""
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()]
    return next(
        (line for line in reversed(lines) if any(mark in line for mark in ("FATAL", "ERROR", "Error:"))),
        lines[-1] if lines else fallback,
    )


def log_tail(path: Path, lines: int = 5) -> list[str]:
    """The last non-empty lines of a log (to quote in a one-line error)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line.strip() for line in text.strip().splitlines() if line.strip()][-lines:]


def start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux' /proc), None where unknown: a
    PID reused by another process has another start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]  # field 22; the command name in parentheses may hold spaces


def _command_line(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return raw.decode(errors="replace").rstrip("\0").split("\0")


def _recorded_process(pid_file: Path, folder: Path) -> tuple[int, str | None]:
    """The PID of ``pid_file`` and, when a running process with that PID is not the one
    :func:`spawn` started (it exited and the PID was reused, or the file was changed), why not.
    A PID whose process is gone is returned as it is: while any process of its group lives the
    PID is not reused, so signalling the group reaches only what the service left behind."""
    text = pid_file.read_text().strip()
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    if isinstance(record, int) or not isinstance(record, dict):  # an earlier version's file: the PID alone
        pid = int(text) if text.isdigit() else 0
        command = _command_line(pid) if pid else None
        if pid and start_time(pid) is not None and str(folder.resolve()) not in " ".join(command or []):
            return pid, "the file has no start time and the process's command line does not name this folder"
        return pid, None if pid else "no PID"
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return 0, "no PID"
    current = start_time(pid)
    if current is None:
        return pid, None
    if record.get("start") is not None and current != record.get("start"):
        return pid, "another process has that PID now (another start time)"
    command = _command_line(pid)
    if command not in (None, [""]) and command != record.get("command"):  # a zombie's command line is empty
        return pid, "another process has that PID now (another command line)"
    return pid, None


def stop(name: str, folder: Path, wait_s: float = 10.0) -> bool:
    """Stop the service recorded in ``folder/<name>.pid`` (its whole process group); return
    whether one was running. A PID file whose process is not the one :func:`spawn` started
    (same PID, start time and command line) is removed without signalling anything."""
    pid_file = folder / f"{name}.pid"
    if not pid_file.is_file():
        return False
    pid, stale = _recorded_process(pid_file, folder)
    if stale:
        pid_file.unlink(missing_ok=True)
        if pid:
            print(f"note: {pid_file} names PID {pid}, but {stale}: not signalled")
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return False
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        _reap(pid)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pid_file.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect the exit status of ``pid`` when it is this process's child (tests start
    services in-process); a dead child would otherwise linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
