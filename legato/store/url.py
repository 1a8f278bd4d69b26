"""Parsing database URLs: ``sqlite:///path`` and ``postgresql://user@host:port/db?schema=s``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..errors import ConfigurationError

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class DatabaseURL:
    """A parsed database URL."""

    backend: str  # "sqlite" | "postgresql"
    raw: str
    path: Path | None = None  # SQLite file
    conninfo: str | None = None  # PostgreSQL libpq URL without our own parameters
    schema: str = "legato"

    @property
    def sqlalchemy_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.path}"
        assert self.conninfo is not None
        return "postgresql+psycopg://" + self.conninfo.split("://", 1)[1]

    def redacted(self) -> str:
        """The URL without its password, for messages."""
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", self.raw)


def parse_url(url: str) -> DatabaseURL:
    """Parse and validate a database URL, raising :class:`ConfigurationError` if invalid."""
    if url.startswith("sqlite://"):
        rest = url[len("sqlite://") :]
        if not rest.startswith("/") or rest in ("/", "/:memory:"):
            raise ConfigurationError(
                f"invalid SQLite URL {url!r}: use sqlite:///relative.db or sqlite:////abs/path.db"
            )
        return DatabaseURL("sqlite", url, path=Path(rest[1:].split("?", 1)[0]))
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme in ("postgres", "postgresql", "postgresql+psycopg"):
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", "legato")
        if not _SCHEMA_NAME.match(schema):
            raise ConfigurationError(f"invalid schema name {schema!r} in database URL")
        conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query), ""))
        return DatabaseURL("postgresql", url, conninfo=conninfo, schema=schema)
    raise ConfigurationError(
        f"unsupported database URL {url!r}: use sqlite:///file.db or postgresql://host/db"
    )
