"""GFTP: yagna's file transfer over the GSB, how ``send_*``/``download_*`` travel on a real node.

The side that owns a file serves it (:func:`publish`, for downloads) or a place for it
(:func:`open_upload`, for uploads) on its own node's GSB; the side that moves the data calls
that node through its daemon (:func:`download`, :func:`upload`; :class:`GftpScheme` is the
execution unit's ``gftp://`` transport). The wire is yagna's own, so either side can be a Rust
yagna component: :mod:`workgen.gftp.transfer` describes the messages, the SHA3-256 content hash,
the ``gftp://<node_id>/<name>`` URLs and the addressing.
"""

from .publisher import Published, Receiver, open_upload, publish
from .transfer import (
    GftpError, GftpIntegrityError, GftpLimitExceeded, GftpScheme, download, file_hash, gftp_url,
    is_content_hash, parse_url, upload,
)

__all__ = [
    "GftpError",
    "GftpIntegrityError",
    "GftpLimitExceeded",
    "GftpScheme",
    "Published",
    "Receiver",
    "download",
    "file_hash",
    "gftp_url",
    "is_content_hash",
    "open_upload",
    "parse_url",
    "publish",
    "upload",
]
