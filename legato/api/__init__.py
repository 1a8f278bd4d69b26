"""The REST API: every question and action of Legato over HTTP (FastAPI, served by uvicorn).

Build it with :func:`create_app`; ``legato server`` and ``legato up`` serve it.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
