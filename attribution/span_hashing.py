"""Word-window hashes for the ``spans/1`` pre-filter.

A segment stores the sorted hashes of every window of ``shingle_words``
consecutive words of its corpus (``shingles.npy``). At query time the windows of
the output are hashed with the same function and looked up with one
``np.searchsorted`` call, so start positions that cannot begin a long enough
match are rejected without touching the suffix array.

The table keeps 32-bit fingerprints (the top half of each 64-bit hash): half
the size, at a false-positive rate of (distinct windows / 2**32) per lookup,
0.3% for a 100 MB corpus.

The hash is a polynomial hash modulo 2**64 computed from prefix sums, which
numpy vectorises. It is not collision resistant against an adversary; it
does not need to be: a collision only makes a start position a candidate,
and every candidate is checked exactly against the suffix array.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

_MOD = 1 << 64
_MASK = _MOD - 1
_BASE = 0x9E3779B97F4A7C15  # odd, so it has an inverse modulo 2**64
_BASE_INV = pow(_BASE, -1, _MOD)
# Bytes hashed per numpy pass: bounds the temporaries (3 uint64 arrays of this length).
_CHUNK = 1 << 22


def _powers(base: int, count: int) -> npt.NDArray[np.uint64]:
    """``base**i mod 2**64`` for i in 0..count-1 (numpy array arithmetic wraps silently)."""
    out = np.empty(count, dtype=np.uint64)
    out[0] = 1
    if count > 1:
        out[1:] = np.uint64(base)
        np.cumprod(out[1:], out=out[1:])
    return out


def _prefix_at(
    data: npt.NDArray[np.uint8], positions: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Prefix hash ``sum(data[j] * B**j for j < p)`` and ``B**-p`` at each sorted position p."""
    size = len(data)
    span = min(_CHUNK, size) + 1
    powers = _powers(_BASE, span)
    inverse_powers = _powers(_BASE_INV, span)
    prefix = np.empty(len(positions), dtype=np.uint64)
    inverse = np.empty(len(positions), dtype=np.uint64)
    carry_sum, carry_power, carry_inverse = 0, 1, 1  # Python ints: scalar numpy math warns
    local = np.zeros(span, dtype=np.uint64)
    for begin in range(0, size + 1, _CHUNK):
        chunk = data[begin : begin + _CHUNK]
        length = len(chunk)
        np.cumsum(chunk.astype(np.uint64) * powers[:length], out=local[1 : length + 1])
        last = begin + _CHUNK > size
        lo = int(np.searchsorted(positions, begin, side="left"))
        hi = int(np.searchsorted(positions, begin + length, side="right" if last else "left"))
        relative = positions[lo:hi] - begin
        prefix[lo:hi] = np.uint64(carry_sum) + np.uint64(carry_power) * local[relative]
        inverse[lo:hi] = np.uint64(carry_inverse) * inverse_powers[relative]
        carry_sum = (carry_sum + carry_power * int(local[length])) & _MASK
        carry_power = carry_power * pow(_BASE, length, _MOD) & _MASK
        carry_inverse = carry_inverse * pow(_BASE_INV, length, _MOD) & _MASK
    return prefix, inverse


def word_window_hashes(
    data: bytes | npt.NDArray[np.uint8], spaces: npt.NDArray[np.int64], words: int
) -> npt.NDArray[np.uint64]:
    """Hash of ``data[spaces[i]:spaces[i + words]]`` for i in ``0..len(spaces) - words - 1``.

    ``spaces`` are the sorted offsets of the spaces around words (padded text:
    a space before the first word and after the last), so window i is the
    leading space plus ``words`` whole words. Build and query use this one
    function, so equal windows always hash equally.
    """
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes) else data
    if len(spaces) <= words:
        return np.empty(0, dtype=np.uint64)
    prefix, inverse = _prefix_at(array, spaces)
    # Normalising by B**-start makes the hash independent of where the window sits.
    return (prefix[words:] - prefix[:-words]) * inverse[:-words]


def shingle_fingerprints(hashes: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint32]:
    """The 32-bit fingerprints stored in ``shingles.npy``: the high half of each hash."""
    return (hashes >> np.uint64(32)).astype(np.uint32)
