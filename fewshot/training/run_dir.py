"""Run directories: one writing process at a time, never a folder that is not a run, nothing written on refusal.

Every app (train, eval, pretrain, report) claims its output folder with :func:`claim_run_dir` before it writes
anything there. The claim refuses a folder that holds files a run of this library does not write (the user's own
files are never overwritten), and takes an exclusive ``flock`` on ``<dir>/.lock`` for the life of the process, so
a second process started into the same folder is refused instead of interleaving its files with the first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.training.tensorboard import EVENT_FILE_PREFIX

try:
    import fcntl
except ImportError:  # Windows: no flock; folders are still checked, not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["RUN_FILES", "RunLock", "claim_run_dir", "remove_if_empty"]

#: What a run of this library writes in its folder (temporary files of atomic writes are ``.<name>.*.tmp``, and
#: TensorBoard event files ``events.out.tfevents.*``).
RUN_FILES = frozenset({
    ".lock", ".hydra", "config.yaml", "cli.log", "metrics.csv", "pretrain_metrics.csv", "checkpoints", "eval",
    "results.json", "results.csv", "results.md", "accuracy_vs_shots.png", "learning_curve.png",
    "backbone.safetensors",
})


@dataclass
class RunLock:
    """An exclusive claim on a run directory, held until :meth:`release` or the end of the process."""

    path: Path
    fd: int | None

    def release(self) -> None:
        """Give the folder up (closing the lock file releases the flock); a folder left holding nothing but the
        lock file (the run was refused before it wrote anything) is removed."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        remove_if_empty(self.path)


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it holds nothing, or nothing but a lock file (what a refused run leaves)."""
    if folder.is_dir() and {p.name for p in folder.iterdir()} <= {".lock"}:
        (folder / ".lock").unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # another process put something there in between: leave it
            folder.rmdir()


def _foreign(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()
                  if p.name not in RUN_FILES and not (p.name.startswith(".") and p.name.endswith(".tmp"))
                  and not p.name.startswith(EVENT_FILE_PREFIX))  # TensorBoard's event files


def _unwritable(path: Path, option: str, err: OSError) -> PermissionError:
    return PermissionError(f"cannot write to {option}={path} ({err.strerror or err}): it is read-only or not yours; "
                           f"pass a folder you can write to with {option}=<folder>")


def claim_run_dir(path: Path, *, option: str = "hydra.run.dir") -> RunLock:
    """Claim ``path`` (created if missing) as this process's run directory.

    Args:
        path: the run's output folder.
        option: the setting that chose the folder, for the messages.
    Returns:
        The lock; keep it for as long as the process writes into ``path``.
    Raises:
        ValueError: ``path`` is a file, holds files a run does not write, or is being written by another
            process. Nothing in ``path`` is changed then.
        PermissionError: ``path`` cannot be created or written (a read-only folder or file system).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option}={path} is a file, not a folder; pass a new or empty folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _unwritable(path, option, err) from err
    foreign = _foreign(path)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        raise ValueError(f"{option}={path} holds files that are not a fewshot run ({', '.join(foreign[:3])}{more}); "
                         "nothing was written there: pass a new or empty folder")
    if fcntl is None:
        return RunLock(path, None)
    try:
        fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise _unwritable(path, option, err) from err
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise ValueError(f"another process (pid {holder}) is writing {path}; wait for it to finish, or pass another "
                         f"{option}") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return RunLock(path, fd)
