"""`package.module:name` paths, the escape hatch for users' own tasks and reward functions."""

from __future__ import annotations

import importlib
from typing import Any

from shrinkthink.errors import UserError


def import_dotted(path: str, field: str) -> Any | None:
    """The object at `package.module:name` (`name` may be dotted: `Class.method`), or None when the
    module has no such name. A module that does not import is a one-line error naming `field`."""
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        detail = " ".join(str(exc).split())
        raise UserError(f"{field}: cannot import '{module_name}' ({detail})") from None
    for part in attribute.split("."):
        found = getattr(found, part, None)
    return found
