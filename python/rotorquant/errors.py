"""Exceptions raised by rotorquant.

Failures inside llama.cpp are reported by a NULL pointer or an error code; the
reason is only ever printed through the log callback.  Every exception here
therefore carries ``reason``: the error/warning lines llama.cpp logged while the
failing call ran, so a user sees "failed to allocate buffer of size 9 GiB", not
"failed to create context".
"""
from __future__ import annotations


class RotorQuantError(RuntimeError):
    """Base class: something llama.cpp refused or could not do."""

    def __init__(self, message: str, reason: str = ""):
        self.reason = reason
        super().__init__(f"{message}: {reason}" if reason else message)


class ModelLoadError(RotorQuantError):
    """A GGUF file could not be loaded (bad tensors, unknown architecture, memory)."""


class GGUFFormatError(ModelLoadError, ValueError):
    """A model file that is not a well-formed GGUF, found before llama.cpp reads it (where it
    could abort the interpreter).  ``field`` names what is wrong ("tensor 'output.weight'
    type", "metadata 'llama.block_count'"), ``offset`` where in the file it was read."""

    def __init__(self, message: str, *, path=None, field: str = "", offset: int | None = None):
        self.path, self.field, self.offset = path, field, offset
        super().__init__(message)


class ContextError(RotorQuantError):
    """A context (KV cache, compute buffers) could not be created."""


class DecodeError(RotorQuantError):
    """llama_decode failed: context full, aborted, or a backend error."""


class KVPolicyError(ValueError):
    """A KV policy file is missing, malformed or does not fit the model."""


class ChatError(ValueError):
    """A chat request that the model's template or upstream's chat code refused (bad
    messages, tools or options, a template that does not parse); the message is theirs."""


class RpcError(RotorQuantError):
    """An RPC server (``ggml-rpc-server``) that cannot be used: unreachable, busy with
    another client, not an RPC server, or speaking another protocol version."""
