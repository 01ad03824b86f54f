"""Every file rendered from templates/ (Dockerfile, wheel metadata, guest /init, compat.html) goes
through one jinja2 set-up: an undefined name fails the render instead of writing an empty string,
and HTML is autoescaped."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

__all__ = ["TEMPLATES", "render"]

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@cache
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True,
                       autoescape=lambda name: bool(name and name.endswith(".html.j2")))


def render(template: str, **values: Any) -> str:
    """templates/`template` rendered with `values`; `*.html.j2` autoescaped."""
    return _environment().get_template(template).render(**values)
