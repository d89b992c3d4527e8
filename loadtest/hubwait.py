"""The lean WebSocket agent's wait under gevent: "until my socket is readable or `timeout` seconds
passed", on the hub, with one io watcher per connection that stays registered.

gevent's socket waits raise an exception for every timeout (and its reads one for every EAGAIN),
and a fresh io watcher per wait makes libev change the epoll set twice per wait (a system call
each): one long-lived watcher whose callback wakes the agent only while it waits costs neither.
"""

from __future__ import annotations

import socket
from typing import Any

from gevent import getcurrent
from gevent.hub import get_hub


class HubWait:
    """One agent's waits on the hub; `release` before its socket is closed (the watcher holds the
    file descriptor, which the kernel may hand to the next socket)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._reader: Any = None
        # The greenlet waiting right now, if any: the watchers' callbacks wake only it.
        self._waiting: Any = None

    def __call__(self, sock: socket.socket, timeout: float) -> bool:
        hub = get_hub()
        if sock is not self._sock:
            self.release()
            self._sock = sock
            self._reader = hub.loop.io(sock.fileno(), 1)
        if not self._reader.active:
            self._reader.start(self._on_readable)
        timer = hub.loop.timer(max(0.0, timeout))
        timer.start(self._on_timeout)
        self._waiting = getcurrent()
        try:
            return bool(hub.switch())
        finally:
            self._waiting = None
            timer.close()

    def release(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._sock = self._reader = None

    def _on_readable(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is None:
            # Bytes came while the agent was busy (sending, or waiting out a retry hint): the watcher
            # would fire on every loop until they are read, so it rests until the next wait.
            self._reader.stop()
            return
        waiting.switch(True)

    def _on_timeout(self) -> None:
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.switch(False)
