"""opamp-gateway: a stateless, horizontally scaled OpAMP server."""

from __future__ import annotations

__version__ = "0.1.0"
