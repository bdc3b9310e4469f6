"""multipart/form-data request bodies (image edits and variations, audio transcriptions
and translations): read once, as the pieces the server hands over, and never joined.

python-multipart (the parser Starlette uses) walks the pieces as they arrive. A part's
data is kept as slices of those pieces (memoryviews: no copy), except the few bytes
the parser hands back from its own look-behind buffer when a piece ended inside what
looked like a boundary. The small text fields (`model`, `prompt`, `language`...) are
decoded into `fields`, which is what the middlewares read and change as a request's
body (`ctx.body`): the model to allow, limit, price and route. `pieces(fields)` gives
the body again with the fields as they are now, every file part's bytes untouched, for
the inner app (`replay`) and the upstream, in the same order with the same boundary.

A text field holds at most MAX_FIELD_BYTES (a prompt, not a file); a part with a
filename is a file whatever its size. Repeated fields (`timestamp_granularities[]`)
become lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 1024 * 1024
CRLF = b"\r\n"


class FormError(ValueError):
    """The body is not a multipart/form-data body lockgate can read."""


@dataclass(slots=True)
class Part:
    name: str
    filename: str | None
    content_type: str | None
    data: list[bytes | memoryview] = field(default_factory=list)
    size: int = 0

    @property
    def is_file(self) -> bool:
        return self.filename is not None

    def text(self) -> str:
        return b"".join(self.data).decode("utf-8", "replace")


def boundary_of(content_type: str | None) -> bytes | None:
    """The boundary of a multipart/form-data content type, or None if it is not one."""
    media, options = parse_options_header(content_type or "")
    if media != b"multipart/form-data":
        return None
    boundary = options.get(b"boundary")
    return boundary or None


class Form:
    """One multipart body being read: `feed` each piece, then `finish`."""

    __slots__ = ("boundary", "content_type", "parts", "size", "_parser", "_piece", "_part", "_header", "_headers", "_ended")

    def __init__(self, content_type: str) -> None:
        boundary = boundary_of(content_type)
        if boundary is None:
            raise FormError("the Content-Type names no multipart boundary")
        self.boundary = boundary
        self.content_type = content_type
        self.parts: list[Part] = []
        self.size = 0
        self._piece: bytes = b""
        self._part: Part | None = None
        self._header: list[bytes] = [b"", b""]
        self._headers: dict[bytes, bytes] = {}
        self._ended = False
        callbacks = {
            "on_part_begin": self._begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_end": self._end,
        }
        self._parser = MultipartParser(boundary, callbacks)

    # -- reading ----------------------------------------------------------------------
    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        self._piece = piece
        try:
            self._parser.write(piece)
        except Exception as exc:  # python-multipart raises its own errors and ValueErrors alike
            raise FormError("the multipart body is malformed") from exc
        finally:
            self._piece = b""

    def finish(self) -> None:
        try:
            self._parser.finalize()
        except Exception as exc:
            raise FormError("the multipart body is malformed") from exc
        if not self._ended:
            raise FormError("the multipart body ends before its closing boundary")

    def _begin(self) -> None:
        self._headers = {}
        self._header = [b"", b""]

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header[0] += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header[1] += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header[0].strip().lower()] = self._header[1].strip()
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        name = options.get(b"name")
        if disposition != b"form-data" or name is None:
            raise FormError("a part has no `Content-Disposition: form-data; name=...` header")
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self._part = Part(
            name.decode("utf-8", "replace"),
            filename.decode("utf-8", "replace") if filename is not None else None,
            content_type.decode("latin-1") if content_type else None,
        )
        self.parts.append(self._part)

    def _data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if not part.is_file and part.size > MAX_FIELD_BYTES:
            raise FormError(f"the form field `{part.name}` is larger than {MAX_FIELD_BYTES} bytes (send it as a file)")
        # a slice of the piece being read costs nothing; the look-behind buffer is the parser's own
        part.data.append(memoryview(data)[start:end] if data is self._piece else bytes(data[start:end]))

    def _end(self) -> None:
        self._ended = True

    # -- what was read ---------------------------------------------------------------
    def fields(self) -> dict[str, Any]:
        """The text fields, as a request body: name -> value (a list when repeated)."""
        out: dict[str, Any] = {}
        for part in self.parts:
            if part.is_file:
                continue
            value = part.text()
            if part.name in out:
                previous = out[part.name]
                out[part.name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                out[part.name] = value
        return out

    def files(self) -> list[Part]:
        return [part for part in self.parts if part.is_file]

    def pieces(self, fields: dict[str, Any]) -> list[bytes | memoryview]:
        """The body with `fields` as its text fields now (changed, added or removed),
        file parts as they came, in their places."""
        out: list[bytes | memoryview] = []
        written: set[str] = set()
        for part in self.parts:
            if part.is_file:
                out.append(self._head(part.name, part.filename, part.content_type))
                out.extend(part.data)
                out.append(CRLF)
            elif part.name not in written:
                written.add(part.name)
                out.extend(self._text(part.name, fields.get(part.name)))
        for name, value in fields.items():
            if name not in written:
                out.extend(self._text(name, value))
        out.append(b"--" + self.boundary + b"--" + CRLF)
        return out

    def _text(self, name: str, value: Any) -> Iterator[bytes]:
        values = value if isinstance(value, list) else [value]
        for item in values:
            if item is None:
                continue
            text = item if isinstance(item, str) else str(item).lower() if isinstance(item, bool) else str(item)
            data = text.encode()
            if self.boundary in data:
                raise FormError(f"the form field `{name}` holds the body's boundary")
            yield self._head(name, None, None) + data + CRLF

    def _head(self, name: str, filename: str | None, content_type: str | None) -> bytes:
        disposition = f'form-data; name="{quote(name)}"'
        if filename is not None:
            disposition += f'; filename="{quote(filename)}"'
        lines = [b"--" + self.boundary, b"Content-Disposition: " + disposition.encode()]
        if content_type:
            lines.append(b"Content-Type: " + content_type.encode("latin-1", "replace"))
        return CRLF.join(lines) + CRLF + CRLF


def quote(value: str) -> str:
    """A header parameter value as browsers and httpx write it (HTML's form encoding)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def size_of(pieces: list[bytes | memoryview]) -> int:
    return sum(len(piece) for piece in pieces)
