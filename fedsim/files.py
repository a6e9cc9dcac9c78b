"""Writing files that other programs read while fedsim may be rewriting them."""

from __future__ import annotations

from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (UTF-8), creating its directory: through a temporary file
    beside it and a rename, so a reader (Grafana, kubectl, Prometheus) sees the old file or the
    new one, never half of one. Raises ``OSError``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
