"""Files: the cache folder, manifests (what made an artifact), atomic writes of JSON, tensors and folders
(a failed write leaves nothing behind and says which file and why), and the lock of a run directory.

Seeded generators, devices and progress bars live in `minimaxdd.runtime`."""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import pickle
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import torch
from safetensors import SafetensorError

from minimaxdd.errors import UserError

CACHE_VARIABLE = "MINIMAXDD_CACHE"     # the environment variable that names the cache folder


def cache_dir() -> Path:
    """Where decoded datasets and cached feature extractors live.

    $MINIMAXDD_CACHE, else $XDG_CACHE_HOME/minimaxdd, else ~/.cache/minimaxdd.
    """
    root = os.environ.get(CACHE_VARIABLE)
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "minimaxdd"


T = TypeVar("T")


def read_cache(path: Path, read: Callable[[Path], T]) -> T | None:
    """`read(path)` of a file in the cache folder, or None when it is not there. The cache is optional: a file
    that cannot be read (damaged, unreadable, a cache folder one may not enter) is computed again, with a
    warning, rather than trusted or made an error."""
    try:
        if not path.is_file():
            return None
        return read(path)
    except Exception as e:       # whatever a damaged file makes the reader raise: the value is computed again
        said = (str(e).strip().splitlines() or [""])[0][:200]       # torch.load's messages run to paragraphs
        warnings.warn(f"ignoring the unreadable cache file {path} ({type(e).__name__}: {said}); computing it again. "
                      f"Delete the file, or set {CACHE_VARIABLE} to another folder", stacklevel=2)
        return None


@contextmanager
def writing_cache(path: Path) -> Iterator[None]:
    """Around the write of `path` into the cache folder: the cache is optional, so a write that fails (a full
    disk, permissions, a read-only file system, a cache folder that is a file) is a warning naming the knob,
    $MINIMAXDD_CACHE, and the command goes on with what it computed; nothing half-written is left (the writers
    are atomic)."""
    try:
        yield
    except (UserError, *WRITE_FAILURES) as e:
        cause = e.__cause__ if isinstance(e, UserError) and e.__cause__ is not None else e
        code = os_error_code(cause)
        why = (_WRITE_ERRORS.get(code) or ("a part of its path is a file, not a folder" if code in
                                           (errno.ENOTDIR, errno.EEXIST) else None)
               or (os.strerror(code) if code else f"{type(cause).__name__}: {cause}"))
        warnings.warn(f"cannot write the cache file {path}: {why}; going on without caching it. To keep the cache "
                      f"(and save the work next time), set {CACHE_VARIABLE} to a writable folder with free space",
                      stacklevel=3)


def git_commit() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def manifest(config: dict[str, Any], seed: int | None, wall_time_s: float, **extra: Any) -> dict[str, Any]:
    """What made an artifact: the command line, config, seed, git commit and wall time."""
    return {
        "command": " ".join(sys.argv),
        "config": config,
        "seed": seed,
        "git_commit": git_commit(),
        "wall_time_s": round(wall_time_s, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "torch": torch.__version__,
        **extra,
    }


# ----------------------------------------------------------------------------- atomic writes

# The errno values of a failed write that a user can fix, as the message says them.
_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file system (or a limit of this process) allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
# ours: torch.save reports a failed write as a RuntimeError without an errno ("unexpected pos ..."); with
# less free space than this beside the file, it is put down to a full disk
FULL_DISK_BYTES = 16 * 2**20
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)|\[Errno (\d+)\]")
# what a failed write raises: OSError from Python and Pillow, RuntimeError from torch.save,
# SafetensorError from safetensors' writer (both with the OS error in their text, when they say it)
WRITE_FAILURES = (OSError, RuntimeError, SafetensorError)
# ours: the names of temporary files and folders beside an output: short (any name a file system allows for the
# output itself still works) and hidden; the rest of the name is mkstemp's random part
TMP_PREFIX = ".mmdd-"
NAME_MAX = 255      # bytes in one path component (Linux, macOS and Windows file systems)


def _umask() -> int:
    """The process's umask, read from /proc where it is there (Linux >= 4.7) rather than set and restored."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _publish_mode(tmp: Path, directory: bool = False) -> None:
    """Give a temporary file (0600 from mkstemp) or directory (0700 from mkdtemp) the mode any other new
    file gets, 0666 (0777) less the umask, before it is renamed into place."""
    os.chmod(tmp, (0o777 if directory else 0o666) & ~_umask())


def _free_bytes(path: Path) -> int | None:
    for p in (path, *path.parents):
        if p.exists():
            return shutil.disk_usage(p).free
    return None


def os_error_code(e: BaseException) -> int | None:
    """The errno of an OSError, or the OS error quoted in the text of another (safetensors: "os error 28")."""
    if isinstance(e, OSError):
        return e.errno
    m = _ERRNO_IN_TEXT.search(str(e))
    return int(m.group(1) or m.group(2)) if m else None


def write_failure(path: str | Path, e: BaseException) -> UserError | None:
    """A UserError naming `path` and why writing it failed (a full disk, a quota, permissions, a read-only
    file system), or None when `e` does not look like a failed write."""
    path = Path(path)
    code = os_error_code(e)
    if code is None and isinstance(e, WRITE_FAILURES):
        free = _free_bytes(path)
        if free is not None and free < FULL_DISK_BYTES:
            code = errno.ENOSPC
    if code not in _WRITE_ERRORS:
        return None
    fix = ("free some space or choose another --out" if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
           else "choose a writable --out or fix the permissions")
    return UserError(f"cannot write {path}: {_WRITE_ERRORS[code]}; {fix}")


def raise_if_write_failure(path: Path, e: BaseException) -> None:
    """Raise `write_failure(path, e)` if `e` is a failed write; return (for the caller to re-raise) otherwise."""
    err = write_failure(path, e)
    if err is not None:
        raise err from e


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write; renamed onto `path` when the block ends without an error.

    A reader never sees half a file, a failed write leaves nothing behind, the file gets the mode any new
    file gets (the umask's), and a full disk or a permission problem is a UserError naming `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL: never an existing file; the suffix because torch.save refuses a name that is all extension
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".tmp")
        os.close(fd)
    except OSError as e:
        raise_if_write_failure(path, e)
        raise
    tmp = Path(name)
    try:
        yield tmp
        _publish_mode(tmp)
        os.replace(tmp, path)
    except WRITE_FAILURES as e:
        raise_if_write_failure(path, e)     # while the partial file still takes its space
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically: a reader never sees a half-written file."""
    with atomic_file(path) as tmp, open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """Write `text` atomically, through a new temporary file: never through a link or into a file already there."""
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to `path` via a temporary file and a rename: a reader never sees half a file."""
    with atomic_file(path) as tmp:
        torch.save(obj, tmp)


@contextmanager
def reading(path: str | Path, fix: str) -> Iterator[None]:
    """Turn what reading a truncated or corrupt `path` raises (safetensors' reader, torch.load's zip reader,
    pickle, JSON) into a UserError that names the file and says `fix`; any other error passes unchanged."""
    try:
        yield
    except (SafetensorError, pickle.UnpicklingError, EOFError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is truncated or corrupt ({e}); {fix}") from e
    except RuntimeError as e:
        if "PytorchStreamReader" not in str(e):      # torch.load's message for a damaged archive
            raise
        raise UserError(f"{path} is truncated or corrupt (torch.load: {str(e).split('.')[0]}); {fix}") from e


def finite_or_null(obj: Any) -> Any:
    """`obj` with every non-finite float (nan, inf) replaced by None, so that json.dumps writes strict JSON
    (null) rather than the bare NaN / Infinity that other JSON readers refuse."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_null(v) for v in obj]
    return obj


@contextmanager
def atomic_dir(out: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to `out` only when complete.

    An existing `out` is an error unless `overwrite`, in which case it is replaced only
    after the new one is fully written, so a failure never loses what was there.
    """
    out = Path(os.path.abspath(out))      # `--out .` has no name to put a temporary folder beside
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=TMP_PREFIX))
        _publish_mode(tmp, directory=True)
    except OSError as e:
        raise_if_write_failure(out, e)
        raise
    try:
        yield tmp
        _move_into_place(tmp, out)
    except BaseException as e:
        err = write_failure(out, e) if isinstance(e, WRITE_FAILURES) else None   # before the space is freed
        shutil.rmtree(tmp, ignore_errors=True)
        if err is not None:
            raise err from e
        raise


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished `tmp` onto `out`; an `out` already there is replaced, and restored if that fails."""
    if not out.exists():
        os.replace(tmp, out)
        return
    old = tmp.with_name(tmp.name + "-old")
    os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def beside(path: str | Path, suffix: str) -> Path:
    """`path` with `suffix` added to its name (RUN.lock, SET.dm-state.pt). A name too long to take the suffix is
    shortened to its start and a hash of the whole, so every legal output name has its companions."""
    path = Path(path)
    if len(os.fsencode(path.name + suffix)) <= NAME_MAX:
        return path.with_name(path.name + suffix)
    digest = hashlib.sha256(os.fsencode(path.name)).hexdigest()[:16]
    start = os.fsencode(path.name)[:64].decode(errors="ignore")
    return path.with_name(f"{start}-{digest}{suffix}")


# ----------------------------------------------------------------------------- outputs and inputs

def json_dict(path: Path) -> dict | None:
    """The JSON object in file `path`, or None when it is missing, unreadable or not an object."""
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def written_by_us(folder: Path) -> bool:
    """Whether `folder` is empty or holds the manifest.json (`manifest`) of an artifact this tool wrote."""
    if not any(folder.iterdir()):
        return True
    m = json_dict(folder / "manifest.json")
    return m is not None and {"command", "config"} <= m.keys()


def input_paths(*specs: str | Path | None) -> list[Path]:
    """The files and folders a command reads, from its inputs: a path (a checkpoint, a synthetic set) or a dataset
    spec NAME:ARG whose ARG is a path (imagefolder:D, npz:F); names without one (digits) read no path of the user's."""
    found = []
    for spec in specs:
        if spec is None:
            continue
        for candidate in (str(spec), str(spec).partition(":")[2]):
            if candidate and os.path.lexists(candidate):
                found.append(Path(candidate))
                break
    return found


def refuse_overlap(out: str | Path, inputs: list[Path], flag: str = "--out") -> None:
    """A UserError when `out` (given as `flag`) is, contains or lies inside one of `inputs`: a command never writes
    over, deletes or adds to what it reads."""
    o = Path(out).resolve()
    for given in inputs:
        i = given.resolve()
        how = "is" if o == i else "contains" if o in i.parents else "is inside" if i in o.parents else None
        if how is not None:
            raise UserError(f"{flag} {out} {how} the input {given}: writing there would write over or delete the "
                            f"command's own input; put {flag} outside {given}")


def check_set_out(out: str | Path, overwrite: bool, inputs: list[Path]) -> None:
    """Before the work: the folder `out` a command writes a set into (atomically, replacing it whole) is not one
    of its inputs, not the current folder, and, when it exists, `overwrite` is given and it is an output of ours."""
    refuse_overlap(out, inputs)
    path = Path(out)
    if path.resolve() == Path.cwd().resolve() or path.resolve() in Path.cwd().resolve().parents:
        raise UserError(f"--out {out} is the folder this command runs in, which a new set cannot replace; "
                        f"name a new folder, e.g. --out {path / 'set'}")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if not path.is_dir() or path.is_symlink() or not written_by_us(path):
        raise UserError(f"{out} exists and is not a folder minimaxdd wrote (it has no manifest.json of ours); "
                        "--overwrite replaces only this tool's own output: move it away or choose another --out")


def check_file_out(out: str | Path | None, inputs: list[Path]) -> None:
    """Before the work: a JSON result `out` (evaluate, metrics) is a file name, not a folder or an input, and
    an existing file there is a JSON object (a result of ours), not something else the user keeps."""
    if not out:
        return
    refuse_overlap(out, inputs)
    path = Path(out)
    if path.is_dir():
        raise UserError(f"--out {out} is a folder; --out names the JSON file to write, "
                        f"e.g. --out {path / 'result.json'}")
    if path.is_symlink() or (path.exists() and json_dict(path) is None):
        raise UserError(f"--out {out} exists and is not a JSON result of minimaxdd; move it away or choose "
                        "another --out")


# ----------------------------------------------------------------------------- run locks

# The run directories this process holds (resolved path -> the open, flock'ed lock file). A command holds
# its run directory's lock; what it runs inside that directory (distill's stages) needs no lock of its own.
_HELD: dict[Path, int] = {}
LOCK_ATTEMPTS = 5   # ours: retries when the lock file is replaced between opening and locking it
# ours: how long a busy lock is retried before refusing; another process's probe (`_refuse_if_held_elsewhere`)
# holds it for microseconds, a run for its whole length
LOCK_PATIENCE_S = 0.2


def lock_path(run: str | Path) -> Path:
    """RUN.lock, beside the run directory (inside it, it would outlive an atomic replacement of RUN)."""
    return beside(Path(run).resolve(), ".lock")


@contextmanager
def run_lock(run: str | Path, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of run directory `run` while the block writes into it; a second process asking for it
    (or for a directory inside it) gets a UserError naming the holder's pid, host, start and command.

    The lock is an flock on RUN.lock, which holds that description. The kernel drops an flock when its
    process dies, so the file a killed run leaves behind (kill -9) is stale and taken over, with a warning,
    without a race between two processes taking it. Re-entrant within a process: a directory inside one
    this process holds is not locked again. `enabled` False (ranks other than 0) does nothing.
    """
    run = Path(run).resolve()
    if not enabled or not run.name:
        yield
        return
    if any(h == run or h in run.parents for h in _HELD):
        _refuse_if_held_elsewhere(run, run)       # e.g. `train --out RUN/base` beside this process's distill
        yield
        return
    for above in run.parents:
        _refuse_if_held_elsewhere(above, run)
    fd = _acquire(run)
    _HELD[run] = fd
    try:
        yield
    finally:
        del _HELD[run]
        lock_path(run).unlink(missing_ok=True)     # unlinked before it is unlocked: see _acquire
        os.close(fd)


def _holder(fd: int) -> dict:
    """What the open lock file `fd` says of its holder ({} while it is being written, or when it says nothing)."""
    try:
        obj = json.loads(os.pread(fd, 1 << 16, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _running(pid: Any) -> bool | None:
    """Whether process `pid` runs on this host (os.kill(pid, 0)); None when that cannot be told."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return None
    return True


def _in_use(run: Path, path: Path, holder: dict, inside: Path | None = None) -> UserError:
    pid = holder.get("pid", "unknown")
    where = f" (it holds {run}, which contains {inside})" if inside is not None and inside != run else ""
    gone = ""
    if holder.get("host") == socket.gethostname() and _running(pid) is False:
        gone = (f" (pid {pid} is gone, but a process it started still holds the lock: stop that one, or delete "
                f"{path} if none runs)")
    return UserError(f"{inside or run} is in use by another minimaxdd process: pid {pid} on "
                     f"{holder.get('host', 'this host')}, started {holder.get('started', '?')}, running "
                     f"`{holder.get('command', '?')}`{where}{gone}; lock file {path}. Wait for it to finish, stop "
                     f"it (kill {pid}), or choose another --out")


def _refuse_if_held_elsewhere(run: Path, inside: Path) -> None:
    """A UserError if another process holds the lock of `run` (the directory `inside` or one above it)."""
    if not run.name or run in _HELD:
        return
    path = lock_path(run)
    if not path.exists():
        return
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)    # a link or a FIFO is no lock of ours
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(run, path, _holder(fd), inside) from None
    except OSError:
        pass                                  # a file system without flock: _acquire says so
    finally:
        os.close(fd)


def _acquire(run: Path) -> int:
    """Open and flock RUN.lock, write this process's description into it; returns the descriptor."""
    path = lock_path(run)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise_if_write_failure(path, e)
        raise
    for _ in range(LOCK_ATTEMPTS):
        fd = _open_lock_file(path, run)
        try:
            _flock_patiently(fd)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _in_use(run, path, holder) from None
        except OSError as e:
            warnings.warn(f"cannot lock {path} ({e}); make sure no other run writes into {run}", stacklevel=5)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)   # the holder removed the file between our open and flock: lock the new one
    else:
        raise UserError(f"cannot lock {path}: it keeps being replaced; is another run starting in {run}?")
    _say_if_stale(path, _holder(fd))
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "command": " ".join(sys.argv)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd


def _open_lock_file(path: Path, run: Path) -> int:
    """Open (or create) RUN.lock for writing without following a link (O_NOFOLLOW), and refuse a file that is not
    a lock of ours: another file's link (symbolic or hard), a FIFO or device, or a file that holds something else.
    Its truncation and the description written into it then touch nothing but our own lock."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as e:
        if e.errno == errno.ELOOP:           # O_NOFOLLOW on a symbolic link
            raise UserError(f"{path} is a symbolic link (to {os.readlink(path)}), where the lock file of {run} goes; "
                            f"minimaxdd will not write through it: remove the link (rm {path}) or choose another "
                            "--out") from None
        raise_if_write_failure(path, e)
        raise
    st = os.fstat(fd)
    why = ("is not a regular file" if not stat.S_ISREG(st.st_mode) else
           f"is a hard link to another file ({st.st_nlink} names)" if st.st_nlink > 1 else
           "holds something other than a minimaxdd lock" if st.st_size and "pid" not in _holder(fd) else None)
    if why is not None:
        os.close(fd)
        raise UserError(f"{path}, where the lock file of {run} goes, {why}; minimaxdd will not overwrite it: move "
                        "it away or choose another --out")
    return fd


def _flock_patiently(fd: int) -> None:
    """An exclusive flock on `fd`, retried for LOCK_PATIENCE_S; BlockingIOError if it stays busy."""
    deadline = time.monotonic() + LOCK_PATIENCE_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _say_if_stale(path: Path, old: dict) -> None:
    """Warn that a lock file left by a process that no longer holds it (killed, say) is taken over."""
    if not old.get("pid"):
        return
    state = "is no longer running" if _running(old["pid"]) is False else "no longer holds it"
    warnings.warn(f"taking over the stale lock {path}, left by pid {old['pid']} on {old.get('host', '?')} "
                  f"(started {old.get('started', '?')}), which {state}", stacklevel=6)
