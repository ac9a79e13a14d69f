"""The stdlib's network wire format for log records, and a safe way to read it.

Owns the conversion between :class:`logging.LogRecord` and the plain dict the
stdlib's ``SocketHandler.makePickle`` sends (a 4-byte big-endian length, then
``pickle.dumps(record.__dict__)`` with the message already merged and the
traceback already formatted), and the *restricted* unpickler that reads it.

The stdlib's receiver example calls ``pickle.loads`` on whatever arrives,
which runs arbitrary code for anyone who can connect.  :func:`loads_record`
uses an :class:`pickle.Unpickler` whose ``find_class`` refuses every global,
so only plain containers and scalars (dict, list, tuple, str, bytes, int,
float, bool, None) can be built; the result must be a dict with string keys.
Rejected: JSON on the wire (the stdlib's receivers and senders speak pickle,
and interoperating with them is the point).
"""

from __future__ import annotations

import io
import logging
import pickle
import struct
from typing import Any

from ..errors import RemoteProtocolError

__all__ = [
    "MAX_RECORD_SIZE",
    "dict_to_record",
    "dumps_record",
    "frame_record",
    "loads_record",
    "record_to_dict",
]

MAX_RECORD_SIZE = 1 << 20
_LENGTH = struct.Struct(">L")


def record_to_dict(
    record: logging.LogRecord, formatter: logging.Formatter | None = None
) -> dict[str, Any]:
    """The dict the stdlib's ``SocketHandler`` pickles for ``record``.

    The message is merged with its arguments (``args`` becomes ``None``) and
    an exception is formatted into ``exc_text`` (``exc_info`` becomes
    ``None``), so the dict holds only plain values.

    Args:
        record: the record to convert.
        formatter: used to format the traceback (default: a plain Formatter).

    Returns:
        A new dict; the record is not modified.
    """
    d = dict(record.__dict__)
    d["msg"] = record.getMessage()
    d["args"] = None
    if record.exc_info:
        if not record.exc_text:
            d["exc_text"] = (formatter or _default_formatter).formatException(record.exc_info)
        d["exc_info"] = None
    d.pop("message", None)
    return d


_default_formatter = logging.Formatter()


def dumps_record(record: logging.LogRecord) -> bytes:
    """Pickle ``record`` as the stdlib's ``SocketHandler.makePickle`` does (without the length)."""
    d = record_to_dict(record)
    try:
        return pickle.dumps(d, 1)
    except Exception:
        # An unpicklable value in an extra attribute: send its repr.
        return pickle.dumps({k: _plain(v) for k, v in d.items()}, 1)


def frame_record(record: logging.LogRecord) -> bytes:
    """Length prefix + pickled dict: one frame of the stdlib ``SocketHandler`` stream."""
    data = dumps_record(record)
    return _LENGTH.pack(len(data)) + data


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | bytes | int | float | bool):
        return value
    return repr(value)


class _RecordUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} from a log record")


def loads_record(data: bytes) -> dict[str, Any]:
    """Unpickle one record dict, refusing anything but plain data.

    Args:
        data: the pickled payload (without the length prefix).

    Returns:
        The record's attribute dict.

    Raises:
        RemoteProtocolError: the payload is not a pickled plain dict with
            string keys (the unpickler never imports or calls anything).
    """
    if len(data) > MAX_RECORD_SIZE:
        raise RemoteProtocolError(f"log record of {len(data)} bytes exceeds {MAX_RECORD_SIZE}")
    try:
        obj = _RecordUnpickler(io.BytesIO(data)).load()
    except Exception as exc:
        raise RemoteProtocolError(f"not a plain pickled log record: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise RemoteProtocolError("a log record must be a dict with string keys")
    return obj


def dict_to_record(d: dict[str, Any]) -> logging.LogRecord:
    """Rebuild a :class:`logging.LogRecord` from a received dict (``makeLogRecord``).

    Missing essentials get safe defaults so that formatters do not fail.
    """
    d.setdefault("name", "remote")
    d.setdefault("msg", "")
    if not isinstance(d.get("levelno"), int):
        d["levelno"] = logging.INFO
    d.setdefault("levelname", logging.getLevelName(d["levelno"]))
    d["args"] = None if not isinstance(d.get("args"), tuple | dict) else d["args"]
    d["exc_info"] = None
    return logging.makeLogRecord(d)
