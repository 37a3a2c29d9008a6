"""Atomic writes: a file or directory is whole under its final name, or the previous one is.

Every writer of the project goes through here (checkpoints, weights, config.yaml,
metrics.jsonl rewrites, summary.json, reports, figures, benchmark results, datasets).
A file is written under a hidden temporary name beside its target (same filesystem,
so the rename is atomic), flushed to disk, given the permissions a plain `open` would
give, and renamed over the target; on any failure the temporary is removed and the
previous file stays as it was.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from visiontrain.infra.errors import UsageError

# Less free space than this after a failed write: the disk was full (writers' own errors do not say so).
DISK_FULL_BYTES = 4 * 2**20


class UnreadableFile(UsageError):
    """A JSON file the program depends on is missing or damaged; the message names it."""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (metrics.jsonl); none for a file that does not exist."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _temp_name(final: Path) -> Path:
    # Unique per process and call; keeps the suffix because some writers (matplotlib) pick the format from it.
    return final.with_name(f".{final.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{final.suffix}")


_TEMPORARY = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def process_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def clean_leftovers(directory: Path, stem: str | None = None, owned: bool = False) -> list[str]:
    """Undo what a killed writer left in `directory` (only for targets named `stem`, if given):
    temporaries whose process is gone are removed; a directory `replace_dir` had moved aside
    is put back if its replacement never arrived. Returns the names it removed or restored.

    `owned`: the caller holds the directory's writer lock (train/run_lock.py) and has not started writing, so
    a temporary is a leftover whatever pid its name carries: that pid says nothing across nodes (another node's
    writer may share it with a live process here). Kept only: one of another live process of this host that
    changed in the last minute (`checkpoint export` writes the run's weights without the lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    done = []
    for entry in sorted(directory.iterdir()):
        found = _TEMPORARY.match(entry.name)
        ours = stem is None or (found is not None and found["stem"] == Path(stem).stem)
        if found and ours and _leftover(entry, int(found["pid"]), owned):
            _remove(entry)
            done.append(entry.name)
        elif entry.name.startswith(".") and entry.name.endswith(".old") and stem in (None, entry.name[1:-4]):
            original = entry.with_name(entry.name[1:-len(".old")])
            _remove(entry) if original.exists() else os.replace(entry, original)
            done.append(entry.name)
    return done


def _leftover(entry: Path, pid: int, owned: bool) -> bool:
    if not owned:
        return not process_alive(pid)
    if pid == os.getpid() or not process_alive(pid):
        return True
    try:
        return time.time() - entry.lstat().st_mtime > 60
    except OSError:
        return False


def _umask() -> int:
    # Setting the umask to read it back changes it for every thread meanwhile; Linux reports it in /proc.
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside `directory` durable (not possible on every platform or filesystem)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path for a writer that takes a path (torch.save, safetensors, savefig, open).

    When the block ends normally the file is synced, gets mode 0o666 minus the umask
    (safetensors creates 0600 files) and replaces `final`; otherwise it is removed.
    """
    final = Path(final)
    tmp = _temp_name(final)
    try:
        open(tmp, "xb").close()  # an unwritable location fails here, as a plain OSError naming the path
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as err:
        # Name the file the user asked for, not our hidden temporary (or nothing, as a failed write says).
        raise OSError(err.errno, err.strerror, str(final)) from err
    except Exception as err:
        raise_if_disk_full(final, err)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def raise_if_disk_full(target: Path, err: BaseException) -> None:
    """Name a full disk as such: writers such as torch.save report it as their own RuntimeError
    ("unexpected pos ..."). Call while the failed write's partial output still occupies the disk."""
    if isinstance(err, OSError) and err.errno is not None:
        return
    try:
        free = shutil.disk_usage(Path(target).parent).free
    except OSError:
        return
    if free < DISK_FULL_BYTES:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from err


def write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path, what: str) -> Any:
    """The parsed content of a JSON file; `UnreadableFile` naming it (as `what`) if it cannot be read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableFile(f"{what} {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UnreadableFile(f"{what} {path} is unreadable ({type(err).__name__}: {err})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise UnreadableFile(f"{what} {path} is not valid JSON ({err})") from None


def link(existing: Path, final: Path) -> None:
    """Give a finished file a second name (a hard link: no second copy), replacing what `final` held."""
    tmp = _temp_name(Path(final))
    try:
        os.link(existing, tmp)
        os.replace(tmp, final)
        _fsync_dir(Path(final).parent)
    finally:
        tmp.unlink(missing_ok=True)


def replace_dir(src: Path, dst: Path) -> None:
    """Rename a finished directory over another: the old one is moved aside first, then removed.

    Two renames, since a directory cannot replace a non-empty one: a crash between them
    leaves no `dst` but a whole `.<dst>.old` beside it, never a mix of the two.
    """
    src, dst = Path(src), Path(dst)
    aside = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(aside, ignore_errors=True)
    if dst.exists():
        os.replace(dst, aside)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(aside, ignore_errors=True)


@contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """A temporary directory beside `final`, renamed over it when the block ends normally, else removed."""
    final = Path(final)
    tmp = _temp_name(final)
    try:
        tmp.mkdir()  # mode 0o777 minus the umask, as the finished directory should have (mkdtemp's is 0700)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(final)) from err
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
