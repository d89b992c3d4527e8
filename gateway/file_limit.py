"""The process's file limit: raised to what the system allows, and checked against what the settings
can make a node hold (docs/security.md, "The liveness probe under descriptor pressure")."""

from __future__ import annotations

import logging
import resource

from gateway.settings import Settings

logger = logging.getLogger("gateway.file_limit")

# Files besides agents' sockets: the store, Redis, kept-alive HTTP agents, the admin port, logs.
RESERVE = 512


def needed(settings: Settings) -> int:
    """Files a node may hold: every WebSocket, each port's unfinished connections, and the reserve."""
    return settings.max_connections + 2 * settings.max_unfinished + RESERVE


def raise_file_limit(settings: Settings) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (container runtimes often start processes at a
    soft 1024); warn if the result is below `needed(settings)`. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux never reports RLIMIT_NOFILE as unlimited (the kernel caps it at fs.nr_open).
    if hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the file limit from %d to %d: %s", soft, hard, exc)
    want = needed(settings)
    if soft < want:
        logger.warning(
            "the file limit (%d) is below what --max-connections and --max-unfinished can take (%d): "
            "raise ulimit -n or lower them, or agents will be refused for want of files",
            soft,
            want,
        )
    return soft
