"""An infer request's body as it streams in: bounded by --max-body-mb after decoding, a gzip body inflated a
piece at a time, so no client can make the server hold more than the limit (a small gzip body can inflate to
gigabytes)."""

from __future__ import annotations

import zlib

from .protocol import ProtocolError, shown

_GZIP = zlib.MAX_WBITS | 16  # zlib's wbits for a gzip container
_PIECE = 1 << 16  # bytes inflated per step: the most a step can exceed the limit by


class Body:
    """The decoded bytes of one request body, refused (413) once they pass LIMIT bytes. ENCODING is the request's
    Content-Encoding: none / identity, or gzip; anything else is refused (415)."""

    def __init__(self, limit: int, encoding: str | None):
        self.limit = limit
        self.size = 0
        self._pieces: list[bytes] = []
        coding = (encoding or "identity").strip().lower()
        if coding not in ("identity", "gzip", "x-gzip"):
            raise ProtocolError(415, f"Content-Encoding {repr(shown(coding, 40))} is not supported (send the body as is, "
                                     "or gzip it)")
        self.gzip = coding != "identity"
        self._inflater = zlib.decompressobj(_GZIP) if self.gzip else None

    def feed(self, chunk: bytes) -> None:
        """Take the next CHUNK as received; ProtocolError 413 past the limit, 400 for gzip data that is damaged."""
        if not self.gzip:
            self._keep(chunk)
            return
        while chunk:
            try:
                piece = self._inflater.decompress(chunk, _PIECE)
            except zlib.error as err:
                raise ProtocolError(400, f"the gzip body is damaged ({err})") from None
            self._keep(piece)
            chunk = self._inflater.unconsumed_tail
            if self._inflater.eof and self._inflater.unused_data:  # gzip allows several members back to back
                chunk = self._inflater.unused_data + chunk
                self._inflater = zlib.decompressobj(_GZIP)

    def _keep(self, piece: bytes) -> None:
        self.size += len(piece)
        if self.size > self.limit:
            self._pieces = []  # a refused body is not kept
            raise ProtocolError(413, f"the request body exceeds the limit of {self.limit} bytes (--max-body-mb)"
                                + (" once inflated" if self.gzip else ""))
        if piece:
            self._pieces.append(piece)

    def bytes(self) -> bytes:
        """The whole decoded body; ProtocolError 400 when a gzip body ended before its end."""
        if self.gzip and not self._inflater.eof:
            raise ProtocolError(400, "the gzip body is truncated (it ends before the gzip stream does)")
        return b"".join(self._pieces)

