"""Writing files: the check a command makes before it replaces a user's files, and a write that
other programs may read while fedsim rewrites it."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


def refuse_existing(paths: Iterable[Path], *, force: bool) -> None:
    """Raise ``FileExistsError`` naming every one of ``paths`` that exists, unless ``force``.

    A command calls it with every file it would write, before it writes any: a refusal leaves
    the user's files as they were and adds none beside them.
    """
    existing = [str(p) for p in paths if p.exists()]
    if existing and not force:
        raise FileExistsError(f"exists already (pass --force to replace): {', '.join(existing)}")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), creating its directory: through a temporary file
    beside it and a rename, so a reader (Grafana, kubectl, Prometheus) sees the old file or the
    new one, never half of one. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
