"""Loading an application from ``module:attribute`` or ``path/to/file.py[:attribute]``."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from .app import App
from .errors import ConfigurationError


def load_app(spec: str) -> App:
    """Import the module named by ``spec`` and return its :class:`App`.

    Without ``:attribute``, the module's ``app`` attribute is used, or its only ``App``.
    """
    target, _, attribute = spec.partition(":")
    if not target:
        raise ConfigurationError(f"invalid application {spec!r}: use module:app or file.py:app")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigurationError(f"no such file: {target}")
            sys.path.insert(0, str(path.parent))
            module_name = path.stem
            module_spec = importlib.util.spec_from_file_location(module_name, path)
            assert module_spec is not None and module_spec.loader is not None
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_name] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(target)
    except ConfigurationError:
        raise
    except ModuleNotFoundError as exc:
        raise ConfigurationError(f"cannot import {target!r}: {exc}") from None
    except Exception as exc:
        raise ConfigurationError(
            f"importing {target!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    if attribute:
        app = getattr(module, attribute, None)
        if not isinstance(app, App):
            raise ConfigurationError(f"{target!r} has no legato App named {attribute!r}")
        return app
    candidate = getattr(module, "app", None)
    if isinstance(candidate, App):
        return candidate
    apps = [value for value in vars(module).values() if isinstance(value, App)]
    if len(apps) != 1:
        raise ConfigurationError(
            f"{target!r} defines {len(apps)} legato Apps; name one as {target}:attribute"
        )
    return apps[0]
