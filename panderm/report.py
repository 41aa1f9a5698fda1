"""Run reports: Markdown plus an HTML rendering of the same content (figures referenced by path)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import markdown
import pandas as pd

from panderm.io import atomic_write_text

HTML_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.2rem 0.6rem; text-align: right; }
th { background: #f3f3f3; }
img { max-width: 100%; border: 1px solid #ddd; }
code { background: #f6f6f6; padding: 0 0.2rem; }
"""


@dataclass
class Report:
    """An ordered list of Markdown blocks; `write(folder)` saves `report.md` and `report.html`."""

    title: str
    blocks: list[str] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(f"{'#' * level} {text}")

    def text(self, text: str) -> None:
        self.blocks.append(text.strip())

    def table(self, frame: pd.DataFrame, caption: str | None = None, *, floatfmt: str = ".3f") -> None:
        """A table from a DataFrame (index dropped; reset it first to keep it)."""
        if caption:
            self.blocks.append(f"**{caption}**")
        self.blocks.append(frame.to_markdown(index=False, floatfmt=floatfmt))

    def figure(
        self, path: str | os.PathLike[str], caption: str, *, relative_to: str | os.PathLike[str]
    ) -> None:
        """An image, referenced relative to the report folder so the folder can be moved as a whole."""
        rel = Path(os.path.relpath(path, relative_to)).as_posix()
        self.blocks.append(f"![{caption}]({rel})\n\n*{caption}*")

    def markdown(self) -> str:
        return "\n\n".join([f"# {self.title}", *self.blocks]) + "\n"

    def write(self, folder: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write `report.md` and `report.html` atomically into `folder`; returns both paths."""
        folder = Path(folder)
        text = self.markdown()
        body = markdown.markdown(text, extensions=["tables", "fenced_code"])
        html = (
            f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{self.title}</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n"
        )
        return atomic_write_text(folder / "report.md", text), atomic_write_text(folder / "report.html", html)
