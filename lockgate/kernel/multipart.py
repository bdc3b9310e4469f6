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
filename is a file whatever its size. A form has at most MAX_PARTS parts, each with at
most MAX_PART_HEADER_BYTES of headers: past either, parsing stops there (a 10 MB body
of tiny fields would otherwise be a hundred thousand parts walked on the event loop).

A name is given once, so the value the middlewares read (the model allowed, limited,
priced and routed; `n`, `size`, `quality` priced) is the only one the upstream gets:
a text field given twice, or a text and a file part of the same name, is refused
(FormError, a 400 naming the field), never passed on for the upstream to choose. Array
fields are the exception, named `name[]` as the OpenAI SDKs write them
(`timestamp_granularities[]`, `include[]`): repeated, they become lists. File parts
may repeat (several `image` files), since no middleware reads a file's content.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_FIELD_BYTES = 1024 * 1024
MAX_PARTS = 1000  # an upload has a file or a few, and a dozen fields
MAX_PART_HEADER_BYTES = 16 * 1024
CRLF = b"\r\n"


class FormError(ValueError):
    """The body is not a multipart/form-data body lockgate can read."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


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

    __slots__ = ("boundary", "content_type", "parts", "size", "_parser", "_piece", "_part", "_header", "_header_size", "_headers", "_names", "_ended")

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
        self._header: list[list[bytes]] = [[], []]
        self._header_size = 0
        self._headers: dict[bytes, bytes] = {}
        self._names: dict[str, bool] = {}  # each part's name, and whether it was a file
        self._ended = False
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._data,
                "on_end": self._end,
            },
        )

    # -- reading ----------------------------------------------------------------------
    def feed(self, piece: bytes) -> None:
        self.size += len(piece)
        self._piece = piece
        try:
            self._parser.write(piece)
        except FormError:
            raise
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
        if len(self.parts) >= MAX_PARTS:
            raise FormError(f"the form has more than {MAX_PARTS} parts")
        self._headers = {}
        self._header = [[], []]
        self._header_size = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_piece(0, data[start:end])

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_piece(1, data[start:end])

    def _header_piece(self, which: int, piece: bytes) -> None:
        # pieces are joined once, at the header's end: a header arriving in many pieces costs no more
        self._header_size += len(piece)
        if self._header_size > MAX_PART_HEADER_BYTES:
            raise FormError(f"a part's headers are larger than {MAX_PART_HEADER_BYTES} bytes")
        self._header[which].append(piece)

    def _header_end(self) -> None:
        name, value = (b"".join(pieces).strip() for pieces in self._header)
        self._headers[name.lower()] = value
        self._header = [[], []]

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
        self._name_once(self._part)
        self.parts.append(self._part)

    def _name_once(self, part: Part) -> None:
        was_file = self._names.get(part.name)
        self._names[part.name] = part.is_file
        if was_file is None or (was_file and part.is_file) or (not was_file and not part.is_file and part.name.endswith("[]")):
            return
        raise FormError(
            f"the form gives `{part.name}` more than once"
            + (" (as a file and as a text field)" if was_file != part.is_file else " (only array fields, named `name[]`, may repeat)"),
            part.name,
        )

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
        """The text fields, as a request body: name -> value (a list for an array field given more than once)."""
        values: dict[str, list[str]] = {}
        for part in self.parts:
            if not part.is_file:
                values.setdefault(part.name, []).append(part.text())
        return {name: found[0] if len(found) == 1 else found for name, found in values.items()}

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
