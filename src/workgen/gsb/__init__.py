"""The Golem Service Bus (GSB): the message bus inside and between yagna daemons.

:func:`open_gsb` connects to a daemon's GSB router and yields a :class:`GsbClient` that serves
address prefixes and calls services; :mod:`workgen.gsb.codec` is the wire format, without I/O.
The errors here are the GSB layer's own: the yagna backend and the provider's yagna link map
them to :mod:`workgen.errors`.
"""

from .client import GsbClient, Handler, open_gsb
from .codec import decode_payload, encode_payload, err, ok, unwrap_result
from .errors import (
    GsbCallError, GsbClosed, GsbConnectionError, GsbConnectionLost, GsbError, GsbHandlerError,
    GsbProtocolError, GsbRegistrationError, GsbRemoteError,
)

__all__ = [
    "GsbCallError",
    "GsbClient",
    "GsbClosed",
    "GsbConnectionError",
    "GsbConnectionLost",
    "GsbError",
    "GsbHandlerError",
    "GsbProtocolError",
    "GsbRegistrationError",
    "GsbRemoteError",
    "Handler",
    "decode_payload",
    "encode_payload",
    "err",
    "ok",
    "open_gsb",
    "unwrap_result",
]
