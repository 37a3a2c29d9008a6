"""Exceptions that entry points turn into exit codes, and the wrapper that does it.

Exit codes (a user-facing contract): 0 success, 2 bad usage/config/input or an output
location that cannot be written: disk full, read-only, no permission (one line naming the
bad value or path), 1 any other failure, 3 stopped on request (SIGUSR1/SIGTERM)
after writing a checkpoint: run the same command again to resume.
"""

from __future__ import annotations

import argparse
import errno
import re
import sys
import traceback
from typing import Callable


class UsageError(Exception):
    """Bad config, argument, path or input: the user can fix it. Exit code 2."""

    exit_code = 2


class TrainingFailed(Exception):
    """Training itself went wrong (non-finite loss, ...). Exit code 1, no traceback."""

    exit_code = 1


class CheckFailed(Exception):
    """A result failed its own verification (an exported model disagrees with the original). Exit code 1,
    no traceback; whatever failed was not kept."""

    exit_code = 1


class Preempted(Exception):
    """Stopped on a signal after writing a checkpoint; the run resumes when started again. Exit code 3.

    `signal` names the signal this process received ("SIGUSR1", "SIGTERM"), or "" when
    another rank received it: launchers decide from it whether to requeue.
    """

    exit_code = 3

    def __init__(self, message: str, signal: str = ""):
        super().__init__(message)
        self.signal = signal


class PeerFailed(Exception):
    """Another rank of the run failed at a point every rank passes together: this rank ends with that rank's
    exit code and one line pointing to its log, instead of waiting in the next collective."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# Failures of the machine rather than of the program: the user fixes them (space, another location).
FULL = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded"}
REFUSED = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a directory",
    errno.EISDIR: "it is a directory",
    errno.EEXIST: "it is a file where a directory is needed",  # mkdir(parents=True) meeting a file on the path
    errno.ENAMETOOLONG: "a name in the path is too long for the file system",
}


def describe_os_error(err: OSError) -> str | None:
    """The one line for a full disk or a refused path, or None for other OS errors."""
    where = err.filename or "a file"
    if err.errno in FULL:
        return f"could not write {where}: {FULL[err.errno]}; free space or choose another location " \
               "(files written before are intact)"
    if err.errno == errno.EROFS:
        return f"could not write {where}: read-only file system; choose another location"
    if err.errno in REFUSED:
        fix = "a shorter path" if err.errno == errno.ENAMETOOLONG else "another location or fix its permissions"
        return f"cannot use {where}: {REFUSED[err.errno]}; choose {fix}"
    return None


# How gloo and NCCL report that the other end of a connection went away: the process at that end
# died, was killed, or its node went down. Only errors raised by a communication library count.
LOST_PEER = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|"
                       r"communicator was aborted", re.IGNORECASE)
COMMUNICATION = re.compile(r"gloo|nccl|c10d|ProcessGroup", re.IGNORECASE)


# How gloo reports a collective that waited out the process-group timeout (parallel.timeout): the process at
# the other end hangs, was stopped, or its node went away without closing its connections.
TIMED_OUT = re.compile(r"Timed out waiting (\d+) ?ms|timeout caused pair closure", re.IGNORECASE)


def describe_lost_peer(err: Exception) -> str | None:
    """The one line for a collective that failed because another process of the run is gone or stopped
    answering, or None."""
    message = str(err)
    if not isinstance(err, RuntimeError) or not COMMUNICATION.search(message):
        return None
    timed_out = TIMED_OUT.search(message)
    if timed_out:  # gloo names the wait, or says a connection was closed after one
        waited = f"={int(timed_out.group(1)) / 1000:g} s" if timed_out.group(1) else ""
        return (f"waited parallel.timeout{waited} for another process of this run: it hangs, was stopped, "
                "or its node went down; its own log says why. Started again, the run resumes from its last "
                "checkpoint")
    if not LOST_PEER.search(message):
        return None
    address = re.search(r"\[(\d{1,3}(?:\.\d{1,3}){3})\]", str(err))
    where = f" (at {address.group(1)})" if address else ""
    return (f"lost contact with another process of this run{where}: it stopped or its node went down; "
            "its own log says why. Started again, the run resumes from its last checkpoint")


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UsageErrors: one line and exit code 2 through `run_cli`, also in-process."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def report_error(err: UsageError | TrainingFailed | CheckFailed | Preempted | PeerFailed) -> None:
    """The one line a user reads: no traceback for errors we can name."""
    print(f"error: {err}", file=sys.stderr, flush=True)


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run `main(argv)` and map exceptions to exit codes with a one-line message."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        return int(main(argv) or 0)
    except (UsageError, TrainingFailed, CheckFailed, Preempted, PeerFailed) as err:
        report_error(err)
        return err.exit_code
    except OSError as err:
        line = describe_os_error(err)
        if line is None:
            traceback.print_exc()
            return 1
        print(f"error: {line}", file=sys.stderr, flush=True)
        return UsageError.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as err:
        line = describe_lost_peer(err)
        if line is None:
            traceback.print_exc()
        else:
            print(f"error: {line}", file=sys.stderr, flush=True)
        return 1
