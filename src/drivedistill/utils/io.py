"""Atomic file writes: write to a temporary file in the same directory, fsync, then rename.

A crash leaves either the old file or the new one, never a torn file. The file gets the permissions a
plain `open(path, "w")` would give it (mkstemp's own are 0600: a run directory would be unreadable to
the rest of a team on a shared disk); they are set after the writer ran, since some writers (safetensors)
replace the file. A full disk raises `OSError(ENOSPC)` naming the file, also where the writer reports it
otherwise (torch.save: "unexpected pos").
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    """0o666 less the process umask (read without changing it where /proc says it, else set and restored)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        try:
            yield tmp_path
            os.chmod(tmp_path, _file_mode())
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        except Exception as e:
            if _disk_full(e, path.parent):
                free = shutil.disk_usage(path.parent).free
                raise OSError(
                    errno.ENOSPC,
                    f"No space left on device ({free} bytes free) while writing {path}: {e}",
                    str(path),
                ) from e
            raise
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


# below this many free bytes a failed write is taken to be a full disk (writers that hide ENOSPC)
FULL_DISK_BYTES = 1 << 20


def _disk_full(err: BaseException, directory: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(directory).free < FULL_DISK_BYTES
    except OSError:
        return False


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(Path(path), text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(Path(path), json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_with(path: Path, writer: Callable[[Path], None]) -> None:
    """Call `writer(tmp_path)` (e.g. a pyarrow or safetensors save) and rename the result into place."""
    with atomic_path(Path(path)) as tmp:
        writer(tmp)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
