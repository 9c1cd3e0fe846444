"""CRC-32 of every row of a packed array in one compiled call.

The same checksum as :func:`zlib.crc32` (so rows saved by earlier versions still
verify), computed without the GIL: a save runs beside the scoring loop, and one call
to :func:`zlib.crc32` per row hands the GIL back and forth once per row, which under
a busy loop costs far more than the checksum itself.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["crc32_rows"]


def _tables() -> np.ndarray:
    """Slicing-by-8 tables of the reflected CRC-32 polynomial (zlib's)."""
    t = np.zeros((8, 256), dtype=np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0xEDB88320 if c & 1 else c >> 1
        t[0, n] = c
    for k in range(1, 8):
        t[k] = (t[k - 1] >> 8) ^ t[0][t[k - 1] & 0xFF]
    return t


_T = _tables()


@numba.njit(nogil=True, cache=True)
def _crc32_kernel(buf: np.ndarray, t: np.ndarray) -> np.ndarray:  # pragma: no cover - compiled
    n, size = buf.shape
    out = np.empty(n, dtype=np.uint32)
    for r in range(n):
        c = np.uint32(0xFFFFFFFF)
        i = 0
        while i + 8 <= size:
            lo = c ^ (np.uint32(buf[r, i]) | (np.uint32(buf[r, i + 1]) << 8) | (np.uint32(buf[r, i + 2]) << 16)
                      | (np.uint32(buf[r, i + 3]) << 24))
            c = (t[7, lo & 0xFF] ^ t[6, (lo >> 8) & 0xFF] ^ t[5, (lo >> 16) & 0xFF] ^ t[4, lo >> 24]
                 ^ t[3, buf[r, i + 4]] ^ t[2, buf[r, i + 5]] ^ t[1, buf[r, i + 6]] ^ t[0, buf[r, i + 7]])
            i += 8
        while i < size:
            c = t[0, (c ^ buf[r, i]) & 0xFF] ^ (c >> 8)
            i += 1
        out[r] = c ^ np.uint32(0xFFFFFFFF)
    return out


def crc32_rows(rows: np.ndarray) -> np.ndarray:
    """``zlib.crc32`` of each record's bytes (uint32, one per row)."""
    flat = np.ascontiguousarray(rows).view(np.uint8).reshape(len(rows), rows.dtype.itemsize)
    return _crc32_kernel(flat, _T)
