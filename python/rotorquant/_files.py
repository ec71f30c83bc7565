"""Files written whole or not at all."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike[str], data: bytes | str | Iterable[bytes]) -> Path:
    """Write ``data`` (bytes, text, or chunks of bytes) to a temporary file beside ``path``
    and rename it over ``path``: a crash or an exception leaves the old file (or none),
    never a partial one under the final name.  The file gets the permissions a plain
    ``open(path, "w")`` would (mkstemp's are owner-only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, str):
                data = data.encode()
            for chunk in [data] if isinstance(data, (bytes, bytearray)) else data:
                f.write(chunk)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
