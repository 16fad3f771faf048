"""The errors of the GSB layer.

They are internal to ``workgen.gsb``: the layers built on the bus (the yagna backend, the
provider's yagna link, GFTP) translate them into :mod:`workgen.errors` at their edge. Misuse of
the client (a bad URL, a call after the block ended) raises plain ``ValueError``/``RuntimeError``.

::

    GsbError
    ├── GsbProtocolError        malformed bytes on the wire (also a ``ValueError``)
    ├── GsbConnectionError      the router cannot be reached
    │   ├── GsbConnectionLost   ... it went away while we were connected: broken
    │   └── GsbClosed           ... we closed the connection ourselves: closed
    ├── GsbRegistrationError    the router refused to (un)register a service prefix
    ├── GsbCallError            a call failed at the bus level (code 400/404/500)
    ├── GsbRemoteError          the service answered ``{"Err": ...}``
    └── GsbHandlerError         raised by *our* handlers to answer ``{"Err": ...}``
"""

from __future__ import annotations

from typing import Any


class GsbError(Exception):
    """Base of every error the GSB layer raises."""


class GsbProtocolError(GsbError, ValueError):
    """Bytes that are not a valid GSB frame, protobuf packet or flexbuffers payload."""


class GsbConnectionError(GsbError):
    """The GSB router at ``url`` cannot be reached."""

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url


class GsbConnectionLost(GsbConnectionError):
    """The GSB router at ``url`` went away (daemon stopped, socket broken, protocol error)."""


class GsbClosed(GsbConnectionError):
    """The operation was cut short because this side closed the connection."""


class GsbRegistrationError(GsbError):
    """The router refused to register (409: taken) or unregister (404: not ours) ``service_id``."""

    def __init__(self, service_id: str, code: int, message: str) -> None:
        super().__init__(f"{service_id}: code {code}" + (f": {message}" if message else ""))
        self.service_id = service_id
        self.code = code
        self.message = message


class GsbCallError(GsbError):
    """A call failed below the service's own result: no such address (400) or a failure (500).

    ``message`` is the text the router or the serving side put in the reply.
    """

    def __init__(self, code: int, message: str, *, address: str = "") -> None:
        where = f" calling {address}" if address else ""
        super().__init__(f"GSB error {code}{where}: {message}")
        self.code = code
        self.message = message
        self.address = address


class GsbRemoteError(GsbError):
    """The service answered ``{"Err": error}``; ``error`` is the decoded error value."""

    def __init__(self, error: Any, *, address: str = "") -> None:
        where = f"{address}: " if address else ""
        super().__init__(f"{where}{error!r}")
        self.error = error
        self.address = address


class GsbHandlerError(GsbError):
    """Raise from a service handler to answer ``{"Err": error}`` instead of ``{"Ok": ...}``."""

    def __init__(self, error: Any) -> None:
        super().__init__(repr(error))
        self.error = error
