"""Training as a group of cooperating processes, one per host (JAX backend).

A lab with several GPU machines runs one training stage as N processes, one on each, that
train one model together: every step's global batch is split across all devices of all hosts
(Keras 3's ``DataParallel``) and the gradients are all-reduced, so the run takes the same steps
as on one device. Each process is started with the same stage command and three variables::

    PIPELINE_COORDINATOR=10.0.0.1:7777   host:port of process 0 (it listens there)
    PIPELINE_NUM_PROCESSES=2             how many processes the group has
    PIPELINE_PROCESS_ID=0                this process's rank, 0 .. N-1

Process 0 (the chief) is the only one that logs to MLflow (or writes the offline bundle) and
writes the stage's outputs; the others keep their checkpoints in a temporary folder and write
nothing. Every host needs the stage's inputs (the ingested images and the split).

The group is joined with ``jax.distributed.initialize``, which is what
``keras.distribution.initialize`` calls, but with the heartbeat timeout exposed
(``PIPELINE_HEARTBEAT_SECONDS``, default 30; Keras' call keeps JAX's 100 s): when a process
dies, a survivor's next collective fails (on CPUs: ``Gloo AllGather failed ... Connection reset
by peer``), or, where it waits without one, JAX's runtime aborts it (SIGABRT, a C++ stack dump)
one heartbeat timeout later. So that a lab sees one clear line instead, each process of a group
runs its stage as a supervised child (:func:`run_stage`): a failed collective ends the child at
once with :data:`LOST_MEMBER_EXIT` (``os._exit``, skipping JAX's shutdown barrier, which would
abort it too), and either end is reported by the parent as one ``error:`` line. The chief has
registered nothing by then: it registers only at the end.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.errors import PipelineError, run_cli

COORDINATOR_ENV = "PIPELINE_COORDINATOR"
PROCESSES_ENV = "PIPELINE_NUM_PROCESSES"
RANK_ENV = "PIPELINE_PROCESS_ID"
HEARTBEAT_ENV = "PIPELINE_HEARTBEAT_SECONDS"
#: Set in the supervised child: it trains, its parent only watches.
CHILD_ENV = "PIPELINE_GROUP_CHILD"
#: Seconds without a heartbeat after which a process counts as dead (unless PIPELINE_HEARTBEAT_SECONDS).
DEFAULT_HEARTBEAT_SECONDS = 30
#: How long a process waits for the others to join before it gives up.
JOIN_TIMEOUT_SECONDS = 300
#: What JAX's runtime prints (to stderr) just before it aborts a process whose group lost a member.
LOST_MEMBER = "JAX distributed service detected fatal errors"
#: The child's exit status when a collective failed because a member is gone.
LOST_MEMBER_EXIT = 75
#: Words of the errors a collective raises when its peer is gone (Gloo on CPUs, NCCL on GPUs).
PEER_GONE = ("Gloo", "NCCL", "Connection reset by peer", "heartbeat", "coordination service")


@dataclass(frozen=True)
class Group:
    """This process's place in a training group."""

    coordinator: str
    count: int
    rank: int
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS

    @property
    def chief(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"process {self.rank} of {self.count} (coordinator {self.coordinator})"


def _integer(name: str, value: str, low: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise PipelineError(f"{name}={value!r}: expected a whole number") from None
    if number < low:
        raise PipelineError(f"{name}={value!r}: must be at least {low}")
    return number


def from_env(environ: dict[str, str] | None = None) -> Group | None:
    """The group from ``PIPELINE_COORDINATOR`` / ``_NUM_PROCESSES`` / ``_PROCESS_ID``, or None
    when none is set (one process). Half a set-up is an error, not a silent single run."""
    env = os.environ if environ is None else environ
    values = {name: env.get(name, "").strip() for name in (COORDINATOR_ENV, PROCESSES_ENV, RANK_ENV)}
    if not any(values.values()):
        return None
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise PipelineError(f"a training group needs {', '.join(values)}; {', '.join(missing)} not set")
    coordinator = values[COORDINATOR_ENV]
    if not re.fullmatch(r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}", coordinator):
        raise PipelineError(f"{COORDINATOR_ENV}={coordinator!r}: expected host:port of process 0")
    count = _integer(PROCESSES_ENV, values[PROCESSES_ENV], 1)
    rank = _integer(RANK_ENV, values[RANK_ENV], 0)
    if rank >= count:
        raise PipelineError(f"{RANK_ENV}={rank} is not below {PROCESSES_ENV}={count}")
    heartbeat = _integer(HEARTBEAT_ENV, env.get(HEARTBEAT_ENV, "").strip() or str(DEFAULT_HEARTBEAT_SECONDS), 1)
    return Group(coordinator, count, rank, heartbeat) if count > 1 else None


def join(group: Group) -> None:
    """Join the group (JAX only; before any JAX computation): blocks until all have joined."""
    import jax

    try:
        jax.distributed.initialize(
            coordinator_address=group.coordinator,
            num_processes=group.count,
            process_id=group.rank,
            initialization_timeout=JOIN_TIMEOUT_SECONDS,
            heartbeat_timeout_seconds=group.heartbeat_seconds,
        )
    except Exception as error:  # jax raises RuntimeError / XlaRuntimeError with a long status text
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise PipelineError(f"{group.describe()} could not join its training group: {first}") from None


def broadcast(values: Sequence[float]) -> list[float]:
    """The chief's ``values`` on every process of the group, so that all decide alike (which
    epoch is best, when to stop) even where their floating point differs in the last digits."""
    import numpy as np
    from jax.experimental import multihost_utils

    return [float(value) for value in multihost_utils.broadcast_one_to_all(np.asarray(values, dtype=np.float64))]


def _ending_on_lost_member(main: Callable[[Sequence[str] | None], None]) -> Callable[[Sequence[str] | None], None]:
    """``main``, but a collective that failed because a member of the group is gone ends the
    process at once (its parent reports it), without a traceback."""

    def wrapped(argv: Sequence[str] | None = None) -> None:
        try:
            main(argv)
        except PipelineError:
            raise
        except Exception as error:
            if any(word in str(error) for word in PEER_GONE):
                sys.stdout.flush()
                os._exit(LOST_MEMBER_EXIT)
            raise

    return wrapped


def run_stage(main: Callable[[Sequence[str] | None], None]) -> int:
    """Run a training stage's ``main``: directly for one process; in a group, as a supervised
    child whose abort by JAX's runtime (a member of the group died) becomes one ``error:`` line."""
    try:
        group = from_env()
    except PipelineError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if group is None:
        return run_cli(main)
    if os.environ.get(CHILD_ENV):
        return run_cli(_ending_on_lost_member(main))
    child = subprocess.Popen(
        [sys.executable, *sys.argv],
        env={**os.environ, CHILD_ENV: "1"},
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
    )
    lost = False
    try:
        for line in child.stderr:
            lost = lost or LOST_MEMBER in line
            if not lost:  # after it comes the runtime's stack dump: not for the user
                sys.stderr.write(line)
                sys.stderr.flush()
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        print("error: interrupted", file=sys.stderr)
        return 130
    if lost or code < 0 or code in (134, LOST_MEMBER_EXIT):
        print(
            f"error: {group.describe()} stopped: a process of the training group died or stopped answering "
            f"(no heartbeat for {group.heartbeat_seconds} s); nothing was registered",
            file=sys.stderr,
        )
        return 1
    return code
