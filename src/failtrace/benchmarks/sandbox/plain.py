"""Plain data across the sandbox boundary: values as one line of JSON that keeps exact types, and nothing else.

Only ``None``, ``bool``, ``int``, ``float``, ``str``, ``bytes``, ``complex``, ``list``, ``tuple``, ``dict``, ``set`` and
``frozenset`` cross, checked with ``type(x) is ...`` so subclasses (an ``int`` whose ``__eq__`` is always true) and
any other object are refused. Written by hand because ``json`` alone merges tuple/list/set and ``pickle`` would run
code on the trusted side. Standard library only: the runner also ships this file's source into the sandboxed child
and the judge, which are fresh interpreters without failtrace on their path.

Encoding: JSON null/bool/number/string/array are themselves (array = list; ints within 2**53); every other type is
a one-key object: ``{"x": "hex"}`` int beyond 2**53, ``{"t": [...]}`` tuple, ``{"d": [[k, v], ...]}`` dict,
``{"s": [...]}`` set, ``{"f": [...]}`` frozenset, ``{"b": "hex"}`` bytes, ``{"c": [re, im]}`` complex.
``canonical=True`` sorts set members and dict items so equal values encode to equal text (digests of large outputs).
"""

import hashlib
import json
import os

MAX_DEPTH = 100
BIG_INT = 2 ** 53


class NotPlain(TypeError):
    """A value that is not plain data (or nests deeper than MAX_DEPTH)."""


def _sorted(encoded_items):
    return sorted(encoded_items, key=lambda e: json.dumps(e, separators=(",", ":")))


def encode(value: object, canonical: bool = False, depth: int = 0) -> object:
    """The JSON-able form of ``value``; raises NotPlain for anything that is not exactly a plain type."""
    if depth > MAX_DEPTH:
        raise NotPlain("nested deeper than %d levels" % MAX_DEPTH)
    kind = type(value)
    if value is None or kind is bool or kind is float or kind is str:
        return value
    if kind is int:  # big ints in hex: int <-> decimal text is quadratic in the digits, hex is linear
        return value if -BIG_INT < value < BIG_INT else {"x": format(value, "x")}
    down = depth + 1
    if kind is list:
        return [encode(v, canonical, down) for v in value]
    if kind is tuple:
        return {"t": [encode(v, canonical, down) for v in value]}
    if kind is dict:
        items = [[encode(k, canonical, down), encode(v, canonical, down)] for k, v in value.items()]
        return {"d": _sorted(items) if canonical else items}
    if kind is set or kind is frozenset:
        members = [encode(v, canonical, down) for v in value]
        return {"s" if kind is set else "f": _sorted(members) if canonical else members}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise NotPlain("a value of type %s is not plain data" % kind.__name__)


def decode(obj: object, depth: int = 0) -> object:
    """The value an :func:`encode` output stands for; raises ValueError for anything else."""
    if depth > MAX_DEPTH:
        raise ValueError("nested deeper than %d levels" % MAX_DEPTH)
    kind = type(obj)
    if obj is None or kind is bool or kind is int or kind is float or kind is str:
        return obj
    down = depth + 1
    if kind is list:
        return [decode(v, down) for v in obj]
    if kind is dict and len(obj) == 1:
        ((tag, body),) = obj.items()
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "x" and type(body) is str and len(body.lstrip("-")) > 13:
            return int(body, 16)
        if type(body) is list:
            if tag == "t":
                return tuple(decode(v, down) for v in body)
            if tag == "s":
                return {decode(v, down) for v in body}
            if tag == "f":
                return frozenset(decode(v, down) for v in body)
            if tag == "c" and len(body) == 2 and all(type(v) in (int, float) for v in body):
                return complex(body[0], body[1])
            if tag == "d" and all(type(kv) is list and len(kv) == 2 for kv in body):
                return {decode(k, down): decode(v, down) for k, v in body}
    raise ValueError("not a plain-data encoding: %.80r" % (obj,))


def digest(value: object) -> str:
    """SHA-256 of the canonical encoding: equal plain values give equal digests."""
    text = json.dumps(encode(value, canonical=True), separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def send(fd: int, message: dict) -> None:
    """Write one message (a JSON-able dict) as one line; ensure_ascii keeps newlines out of the payload."""
    data = (json.dumps(message, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def receive(stream: object, limit: int) -> dict | None:
    """Read one message from a binary stream: None at end of stream; ValueError for an over-long or bad line."""
    line = stream.readline(limit + 1)
    if not line:
        return None
    if len(line) > limit or not line.endswith(b"\n"):
        raise ValueError("a message longer than %d bytes" % limit)
    message = json.loads(line)
    if type(message) is not dict:
        raise ValueError("a message that is not an object")
    return message
