"""Distros as modules: each kernel of kernels.yaml names one (`distro:`, default debian).

Adding a distro is a module implementing base.Distro plus its row here, and its tests.
"""

from __future__ import annotations

from .base import Archive, Distro, Fields, Source
from .debian import DEBIAN
from .local import LOCAL

__all__ = ["DISTROS", "DEFAULT", "Archive", "Distro", "Fields", "Source"]

DISTROS: dict[str, Distro] = {d.name: d for d in (DEBIAN, LOCAL)}
DEFAULT = DEBIAN.name
