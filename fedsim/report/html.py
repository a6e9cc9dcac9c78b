"""``report.html``: a run's ``report.md`` as one self-contained page, readable offline.

The Markdown is converted with the ``markdown`` package; its local images (``plots/*.png``,
SVG) are embedded as base64 ``data:`` URIs and its links to local ``.md`` reports point at
their ``.html`` twins. The stylesheet is inline: the page loads nothing from anywhere.
"""

from __future__ import annotations

import base64
import html
import logging
import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as etree

import markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

log = logging.getLogger(__name__)

EXTENSIONS = ["tables", "fenced_code", "toc", "sane_lists"]
IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; line-height: 1.5;
  color: #1b1b1b; background: #fff; max-width: 62rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.6rem; line-height: 1.25; }
h2 { margin-top: 2rem; padding-bottom: .2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; display: block; overflow-x: auto; max-width: 100%;
  margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; }
td[style*="right"] { white-space: nowrap; }
th { background: #f2f2f2; }
tbody tr:nth-child(even) { background: #fafafa; }
img { max-width: 100%; height: auto; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: .9em;
  background: #f2f2f2; padding: 0 .2rem; border-radius: 3px; }
pre { overflow-x: auto; background: #f2f2f2; padding: .6rem; }
pre code { padding: 0; }
nav.toc ul { padding-left: 1.2rem; margin: .3rem 0; }
.missing { display: inline-block; border: 1px dashed #b00020; color: #b00020; padding: .5rem; }
""".strip()


def _local_path(url: str) -> str | None:
    """The path part of ``url`` if it names a file beside the report, else None."""
    parts = urlsplit(url)
    if parts.scheme or parts.netloc or not parts.path:
        return None
    return unquote(parts.path)


class _SelfContained(Treeprocessor):
    """Embeds local images and points links to local ``.md`` files at their ``.html``."""

    def __init__(self, md: markdown.Markdown, base_dir: Path) -> None:
        super().__init__(md)
        self.base_dir = base_dir

    def run(self, root: etree.Element) -> None:
        for parent in list(root.iter()):
            for index, child in enumerate(parent):
                if child.tag == "img":
                    parent[index] = self._embed(child)
                elif child.tag == "a":
                    self._relink(child)

    def _embed(self, img: etree.Element) -> etree.Element:
        src = img.get("src", "")
        path = _local_path(src)
        if path is None:
            return img
        file = self.base_dir / path
        try:
            data = file.read_bytes()
        except OSError:
            log.warning("%s: image %s not found; report.html notes it", self.base_dir, src)
            note = etree.Element("span", {"class": "missing"})
            note.text = f"Image missing: {src} ({img.get('alt') or 'no caption'})"
            note.tail = img.tail
            return note
        kind = IMAGE_TYPES.get(file.suffix.lower()) or mimetypes.guess_type(file.name)[0]
        encoded = base64.b64encode(data).decode("ascii")
        img.set("src", f"data:{kind or 'application/octet-stream'};base64,{encoded}")
        return img

    def _relink(self, link: etree.Element) -> None:
        href = link.get("href", "")
        path = _local_path(href)
        if path is None or not path.endswith(".md"):
            return
        # Only where the twin exists, so a link to a report without one still opens it.
        if (self.base_dir / path).with_suffix(".html").is_file():
            parts = urlsplit(href)
            link.set("href", parts._replace(path=parts.path[: -len(".md")] + ".html").geturl())


class _SelfContainedExtension(Extension):
    def __init__(self, base_dir: Path) -> None:
        super().__init__()
        self.base_dir = base_dir

    def extendMarkdown(self, md: markdown.Markdown) -> None:
        # After "unescape" (priority 0), so attribute values are the plain URLs.
        md.treeprocessors.register(_SelfContained(md, self.base_dir), "self_contained", -1)


def _nav(tokens: list[dict]) -> str:
    """A list of the report's sections (the headings under its title), or nothing."""
    sections = tokens[0]["children"] if len(tokens) == 1 else tokens
    if not sections:
        return ""
    items = "".join(f'<li><a href="#{t["id"]}">{t["html"]}</a></li>' for t in sections)
    return f'<nav class="toc"><ul>{items}</ul></nav>\n'


def _with_nav(body: str, nav: str) -> str:
    """``body`` with ``nav`` after its title, or at its top when it has none."""
    title, end, rest = body.partition("</h1>\n")
    return title + end + nav + rest if end else nav + body


def write_report(markdown_path: Path, text: str) -> Path:
    """Write the Markdown report ``text`` to ``markdown_path`` and its ``.html`` beside it;
    returns the Markdown's path. Every run and sweep writes its report through here."""
    markdown_path = Path(markdown_path)
    markdown_path.write_text(text, encoding="utf-8")
    _write_html(markdown_path, text)
    return markdown_path


def write_html_report(markdown_path: Path) -> Path:
    """Write ``report.html`` beside the Markdown report ``markdown_path``; returns its path."""
    markdown_path = Path(markdown_path)
    return _write_html(markdown_path, markdown_path.read_text(encoding="utf-8"))


def _write_html(markdown_path: Path, text: str) -> Path:
    converter = markdown.Markdown(
        extensions=[*EXTENSIONS, _SelfContainedExtension(markdown_path.parent)],
        output_format="html",
    )
    body = converter.convert(text)
    tokens = converter.toc_tokens
    # The toc's names are escaped already: unescape first so the title is escaped once.
    title = html.unescape(tokens[0]["name"]) if tokens else markdown_path.parent.name
    page = (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title, quote=False)}</title>\n"
        f"<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
        f"{_with_nav(body, _nav(tokens))}\n</body>\n</html>\n"
    )
    out = markdown_path.with_suffix(".html")
    out.write_text(page, encoding="utf-8")
    return out
