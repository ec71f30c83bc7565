"""Images and audio in chat messages, through upstream's multimodal library (tools/mtmd).

A projector file (``mmproj-*.gguf``, written by ``rq-convert`` next to the model) turns
media into embeddings the text model reads.  In a chat, a content part
``{"type": "image_url", "image_url": {"url": ...}}`` or ``{"type": "input_audio",
"input_audio": {"data": ...}}`` becomes a marker in the rendered prompt, and mtmd cuts
the prompt at the markers into text and media chunks.  Sources: file paths (``str`` or
``os.PathLike``, or ``file://`` URLs), ``data:`` URIs (base64), or raw ``bytes`` of the
file.  The formats are mtmd's: images that stb_image reads (PNG, JPEG, BMP, GIF, ...),
WAV/MP3/FLAC audio.  Remote URLs are refused: nothing is downloaded.

The marker is random per projector (as llama-server's), so text a user types can never
pass for an image.  Each medium is identified by a hash of its bytes, so a chat's next turn
keeps the KV cache up to the end of the last medium it shares with the previous prompt
instead of encoding the image again.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from ._logging import Capture
from ._native import ffi, lib
from .errors import ModelLoadError

_MEDIA_PARTS = {"image_url": ("image_url", "url"), "input_audio": ("input_audio", "data"),
                "image": ("image", None)}


def read_source(source) -> bytes:
    """The bytes of a media file given as bytes, a path, a file:// URL or a data: URI."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str) or not source:
        raise ValueError(f"a media source must be bytes, a path or a data: URI, not {source!r}")
    if source.startswith("data:"):
        header, sep, payload = source.partition(",")
        if not sep or ";base64" not in header:
            raise ValueError("a data: URI must be base64-encoded (data:image/png;base64,...)")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ValueError(f"the data: URI is not valid base64: {exc}") from None
    if source.startswith(("http://", "https://")):
        raise ValueError(f"remote media are not fetched ({source[:60]}): download it and pass the bytes or a path")
    path = Path(unquote(urlparse(source).path)) if source.startswith("file://") else Path(source)
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read media file {path}: {exc.strerror or exc}") from None


def split_media(messages: Sequence[Mapping], marker: str) -> tuple[list, list]:
    """Messages with every media part replaced by a marker part, and the media sources in
    prompt order.  Messages without media are returned as they are."""
    out, sources = [], []
    for msg in messages:
        content = msg.get("content") if isinstance(msg, Mapping) else None
        if not isinstance(content, list):
            out.append(msg)
            continue
        parts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else None
            if kind in _MEDIA_PARTS:
                key, field = _MEDIA_PARTS[kind]
                value = part.get(key)
                src = value.get(field) if field and isinstance(value, Mapping) else value
                if src is None:
                    raise ValueError(f"a {kind!r} content part needs {key!r}" + (f" with {field!r}" if field else ""))
                sources.append(src)
                parts.append({"type": "media_marker", "text": marker})
            else:
                parts.append(part)
        out.append(dict(msg, content=parts))
    return out, sources


class Projector:
    """A multimodal projector loaded for a text model."""

    def __init__(self, path, model, *, n_threads: int, use_gpu: bool, flash_attn_type: int):
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no projector file {path}")
        self.marker = f"<__media_{uuid.uuid4().hex}__>"
        self._marker_c = ffi.new("char[]", self.marker.encode())
        params = lib.mtmd_context_params_default()
        params.use_gpu = use_gpu
        params.n_threads = n_threads
        params.print_timings = False
        params.warmup = False
        params.media_marker = self._marker_c
        params.flash_attn_type = flash_attn_type
        lib.mtmd_helper_log_set(lib._rq_python_log, ffi.NULL)
        with Capture() as cap:
            self._ctx = lib.mtmd_init_from_file(os.fsencode(path), model, params)
        if self._ctx == ffi.NULL:
            raise ModelLoadError(f"could not load the projector {path}", cap.reason())
        self.vision = bool(lib.mtmd_support_vision(self._ctx))
        self.audio = bool(lib.mtmd_support_audio(self._ctx))

    def tokenize(self, prompt: str, sources: Sequence) -> Chunks:
        """Cut ``prompt`` at the markers into text and media chunks (one source each)."""
        bitmaps = []
        try:
            for i, src in enumerate(sources):
                data = read_source(src)
                with Capture() as cap:
                    wrapped = lib.mtmd_helper_bitmap_init_from_buf(self._ctx, data, len(data), False,
                                                                   lib.mtmd_helper_init_opt_default())
                if wrapped.bitmap == ffi.NULL:
                    raise ValueError(f"media #{i + 1} ({len(data)} bytes) is not an image or audio file this "
                                     f"projector reads" + (f": {cap.reason()}" if cap.reason() else ""))
                # what the KV cache's record of a medium compares (prefix reuse across prompts)
                lib.mtmd_bitmap_set_id(wrapped.bitmap, hashlib.sha256(data).hexdigest().encode())
                bitmaps.append(wrapped.bitmap)
            chunks = Chunks()
            text = prompt.encode("utf-8")
            c_text = ffi.new("char[]", text)
            inp = ffi.new("mtmd_input_text *", {"text": c_text, "text_len": len(text), "add_special": True,
                                                "parse_special": True})
            arr = ffi.new("mtmd_bitmap *[]", bitmaps) if bitmaps else ffi.NULL
            with Capture() as cap:
                rc = lib.mtmd_tokenize(self._ctx, chunks.ptr, inp, arr, len(bitmaps))
            if rc != 0:
                chunks.close()
                what = {1: "the number of media does not match the markers in the prompt",
                        2: "a media could not be preprocessed"}.get(rc, f"error {rc}")
                raise ValueError(f"multimodal prompt: {what}" + (f": {cap.reason()}" if cap.reason() else ""))
            return chunks
        finally:
            for b in bitmaps:
                lib.mtmd_bitmap_free(b)

    def close(self) -> None:
        if getattr(self, "_ctx", ffi.NULL) != ffi.NULL:
            lib.mtmd_free(self._ctx)
            self._ctx = ffi.NULL


@dataclass(frozen=True)
class MediaUnit:
    """One medium in the record of what a KV cache holds, next to text tokens (ints): equal
    media (same bytes, same encoding) make equal units, so a later prompt can keep it."""

    id: str
    n_tokens: int
    n_pos: int  # positions it takes (fewer than its tokens with M-RoPE)


def positions(units: Sequence) -> int:
    """KV positions that a run of units (tokens and MediaUnits) takes."""
    return sum(u.n_pos if isinstance(u, MediaUnit) else 1 for u in units)


def n_tokens(units: Sequence) -> int:
    """Tokens (KV cells) that a run of units fills."""
    return sum(u.n_tokens if isinstance(u, MediaUnit) else 1 for u in units)


class Chunks:
    """A tokenized multimodal prompt (mtmd_input_chunks)."""

    def __init__(self):
        self.ptr = lib.mtmd_input_chunks_init()

    @property
    def n_tokens(self) -> int:
        return int(lib.mtmd_helper_get_n_tokens(self.ptr))

    def units(self) -> list[tuple[object, list]]:
        """Each chunk (a C pointer) with its units: its tokens, or one MediaUnit."""
        out = []
        n = ffi.new("size_t *")
        for i in range(lib.mtmd_input_chunks_size(self.ptr)):
            chunk = lib.mtmd_input_chunks_get(self.ptr, i)
            if lib.mtmd_input_chunk_get_type(chunk) == lib.MTMD_INPUT_CHUNK_TYPE_TEXT:
                toks = lib.mtmd_input_chunk_get_tokens_text(chunk, n)
                out.append((chunk, list(toks[0:n[0]])))
            else:
                cid = lib.mtmd_input_chunk_get_id(chunk)
                known = cid != ffi.NULL and ffi.string(cid)
                # a medium without an id is never taken for another one
                out.append((chunk, [MediaUnit(known.decode() if known else f"unknown-{uuid.uuid4()}",
                                              int(lib.mtmd_input_chunk_get_n_tokens(chunk)),
                                              int(lib.mtmd_input_chunk_get_n_pos(chunk)))]))
        return out

    def close(self) -> None:
        if self.ptr is not None:
            lib.mtmd_input_chunks_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter teardown
            pass
