"""A restricted pickle reader for the CIFAR batches: plain containers, strings, numbers and 2-D uint8 arrays, nothing else.

The CIFAR python-format batches are Python 2 `cPickle` files (protocol 2). What they hold is a
dict of strings, ints, lists and one 2-D uint8 numpy array; `batches.meta` is a dict of a list
of strings and two ints. The array is the only thing that makes a pickle name a global: numpy
pickles it as

    numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b"b")  then BUILD with
    (1, shape, numpy.dtype("u1", 0, 1) + BUILD (3, b"|", None, None, None, -1, -1, 0), fortran, bytes)

Why this is safe. Two walls, both before numpy or anything else is touched:

1. The opcodes. Before the unpickler runs, `scan_opcodes` walks the bytes and accepts only the
   opcodes of protocols 0 to 3 that build plain data (strings, numbers, None, booleans, tuples,
   lists, dicts, the memo), plus GLOBAL, REDUCE and BUILD; and every declared length must fit in
   the bytes that remain. So there is no INST, OBJ, NEWOBJ, EXT, STACK_GLOBAL or persistent id, no
   protocol 4 or 5 opcode (out-of-band buffers, bytearrays), and no length that could make the
   unpickler allocate more than the file holds (CPython before 3.14 allocates a BYTEARRAY8's
   declared size up front).
2. The names. A pickle calls code only through objects `find_class` returned (GLOBAL is the only
   opcode left that calls it; REDUCE and BUILD call what is already on the stack) and through
   `__setstate__` of objects it built. Here `find_class` maps exactly the three names above to
   three stand-ins of this module, not to numpy: `_reconstruct` and `dtype` check their
   arguments against the values above and return inert records, and the only `__setstate__`
   methods reachable are those records', which check the state and make a read-only
   `np.frombuffer` view of a bytes object whose length equals the product of the shape. Every
   other name (`os.system`, `builtins.eval`, any numpy function) is refused before anything is
   looked up. Nothing is imported, no numpy constructor sees pickle-made arguments, and an object
   array cannot be made (only the dtype `u1` is accepted).

Callers verify the tarball's MD5 before calling this (`redblue.data.cifar`), so for the real
datasets these walls only ever see the published bytes; they are what holds if a digest is wrong.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools

import numpy as np

from redblue.errors import DataError

# How each accepted opcode's argument is laid out: a fixed number of bytes (>= 0), one line
# ("line"), two lines ("lines"), or a length of 1 or 4 bytes followed by that many ("len1", "len4",
# "slen4" where the length is signed). Everything not listed is refused.
_ARGUMENTS: dict[bytes, int | str] = {
    b"(": 0, b".": 0, b"0": 0, b"1": 0, b"2": 0,  # MARK STOP POP POP_MARK DUP
    b"N": 0, b"\x88": 0, b"\x89": 0,  # NONE NEWTRUE NEWFALSE
    b"I": "line", b"L": "line", b"F": "line", b"J": 4, b"K": 1, b"M": 2, b"G": 8,  # INT LONG FLOAT BININT* BINFLOAT
    b"\x8a": "len1", b"\x8b": "slen4",  # LONG1 LONG4
    b"S": "line", b"T": "slen4", b"U": "len1", b"V": "line", b"X": "len4",  # STRING BINSTRING SHORT_ UNICODE BINUNICODE
    b"B": "len4", b"C": "len1",  # BINBYTES SHORT_BINBYTES (protocol 3)
    b")": 0, b"t": 0, b"\x85": 0, b"\x86": 0, b"\x87": 0,  # EMPTY_TUPLE TUPLE TUPLE1..3
    b"]": 0, b"l": 0, b"a": 0, b"e": 0, b"}": 0, b"d": 0, b"s": 0, b"u": 0,  # lists and dicts
    b"p": "line", b"q": 1, b"r": 4, b"g": "line", b"h": 1, b"j": 4,  # PUT BINPUT LONG_BINPUT GET BINGET LONG_BINGET
    b"\x80": 1,  # PROTO
    b"c": "lines", b"R": 0, b"b": 0,  # GLOBAL REDUCE BUILD
}


def scan_opcodes(raw: bytes, *, source: str) -> None:
    """Refuse a pickle with an opcode outside `_ARGUMENTS`, or an argument that runs past the end, before unpickling."""
    end, pos = len(raw), 0
    while pos < end:
        code = raw[pos : pos + 1]
        layout = _ARGUMENTS.get(code)
        if layout is None:
            info = pickletools.code2op.get(code.decode("latin-1"))
            name = info.name if info is not None else f"{code!r} (not a pickle opcode)"
            raise RefusedPickleError(f"the opcode {name} at byte {pos}")
        pos += 1
        if code == b".":
            return
        if isinstance(layout, int):
            pos += layout
        elif layout in ("line", "lines"):
            for _ in range(1 if layout == "line" else 2):
                newline = raw.find(b"\n", pos)
                pos = end + 1 if newline < 0 else newline + 1
        else:
            width = 1 if layout == "len1" else 4
            size = int.from_bytes(raw[pos : pos + width], "little", signed=layout == "slen4")
            if size < 0:
                raise DataError(f"{source} is not a readable pickle (negative length at byte {pos}); the file is corrupt")
            pos += width + size
        if pos > end:
            break
    raise DataError(f"{source} is not a readable pickle (it ends inside an opcode or before STOP); the file is corrupt")


# The errors malformed pickle bytes can raise inside the C unpickler or the stand-ins below.
_MALFORMED = (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
              OverflowError, MemoryError, RecursionError)


class RefusedPickleError(DataError):
    """A pickle asked for something this reader does not build (a global, a persistent id, a state)."""


class _NdarrayName:
    """What the name `numpy.ndarray` stands for here: a marker, only accepted as `_reconstruct`'s first argument."""


_NDARRAY = _NdarrayName()


class _Uint8Dtype:
    """What `numpy.dtype("u1", 0, 1)` builds here; its BUILD state must be that of a plain uint8."""

    def __setstate__(self, state: object) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]); version 4 adds metadata
        if not (isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in (b"|", "|") and state[2:5] == (None, None, None)):
            raise RefusedPickleError(f"a uint8 dtype with the state {_short(state)}")


class _ArrayRecord:
    """What `_reconstruct(ndarray, (0,), b"b")` builds here; its BUILD state sets `array`, a read-only uint8 view."""

    array: np.ndarray | None = None

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and type(state[0]) is int:
            state = state[1:]  # numpy writes a version first; very old pickles do not
        if not (isinstance(state, tuple) and len(state) == 4):
            raise RefusedPickleError(f"an array with the state {_short(state)}")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and 1 <= len(shape) <= 2
                and all(type(n) is int and n >= 0 for n in shape)):
            raise RefusedPickleError(f"an array of shape {_short(shape)} (only 1-D or 2-D)")
        if not isinstance(dtype, _Uint8Dtype):
            raise RefusedPickleError(f"an array of dtype {_short(dtype)} (only uint8)")
        if type(fortran) not in (bool, int) or not isinstance(raw, bytes):
            raise RefusedPickleError("an array whose data is not a bytes object")
        if math.prod(shape) != len(raw):
            raise RefusedPickleError(f"an array of shape {shape} with {len(raw)} bytes of data")
        self.array = np.frombuffer(raw, dtype=np.uint8).reshape(shape, order="F" if fortran else "C")


def _array_of(record: _ArrayRecord) -> np.ndarray:
    if record.array is None:
        raise RefusedPickleError("an array that was never given its data")
    return record.array


def _reconstruct(cls: object, shape: object, typecode: object) -> _ArrayRecord:
    if cls is not _NDARRAY or shape != (0,) or typecode not in (b"b", "b"):
        raise RefusedPickleError(f"numpy.core.multiarray._reconstruct{_short((cls, shape, typecode))}")
    return _ArrayRecord()


def _dtype(spec: object, align: object = 0, copy: object = 1) -> _Uint8Dtype:
    if spec not in (b"u1", "u1") or type(align) not in (bool, int) or type(copy) not in (bool, int):
        raise RefusedPickleError(f"numpy.dtype{_short((spec, align, copy))} (only 'u1')")
    return _Uint8Dtype()


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


def _short(value: object, depth: int = 0) -> str:
    """A bounded description of a pickle-made value for an error line (no full repr: it may be huge or deep)."""
    if isinstance(value, (bytes, str)):
        return repr(value) if len(value) <= 24 else f"<{type(value).__name__} of length {len(value)}>"
    if value is None or isinstance(value, bool) or (isinstance(value, int) and value.bit_length() <= 64):
        return repr(value)
    if isinstance(value, tuple) and depth < 2:
        items = [_short(item, depth + 1) for item in value[:8]]
        return "(" + ", ".join(items) + (", ...)" if len(value) > 8 else ",)" if len(value) == 1 else ")")
    return f"<{type(value).__name__}>"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise RefusedPickleError(f"the global {_short(module)[1:-1]}.{_short(name)[1:-1]}") from None

    def persistent_load(self, pid: object) -> object:
        raise RefusedPickleError(f"the persistent id {_short(pid)}")


def load_restricted(raw: bytes, *, source: str) -> object:
    """The object a CIFAR-style pickle holds, built with the restricted reader above.

    Python 2 strings come back as bytes (`encoding="bytes"`, so the array data is never decoded).
    A top-level dict's array values come back as read-only uint8 numpy arrays (views of `raw`'s
    copy inside the pickle); arrays deeper down stay opaque records (a CIFAR batch has none).
    Raises RefusedPickleError (a DataError) for anything outside what the module docstring allows,
    DataError for malformed bytes; never any other exception for any input. The opcodes are
    scanned first (`scan_opcodes`), so a refused opcode is never executed.
    """
    try:
        scan_opcodes(raw, source=source)
        value = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
        if isinstance(value, dict):
            value = {key: _array_of(item) if isinstance(item, _ArrayRecord) else item for key, item in value.items()}
        return value
    except RefusedPickleError as exc:
        raise RefusedPickleError(
            f"{source} was refused: its pickle asks for {exc}, which a CIFAR batch never holds; "
            f"the file is not the published one, delete it and download it again"
        ) from None
    except _MALFORMED as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{source} is not a readable pickle ({reason}); the file is corrupt") from None
