"""aljex-sync: keep your own database true to Aljex."""

from __future__ import annotations

__version__ = "0.2.0"
