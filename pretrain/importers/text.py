"""Text fields -> fixed-size numeric features without any model download: signed feature hashing.

Method (stated in the README): a text is lower-cased, runs of whitespace collapse to one space, and it is
cut to `max_chars` characters. Its tokens are the character n-grams for n = 1..`max_n` (characters,
not words, because Qilin and CrossRank are Chinese and have no word boundaries; for Latin text the
n-grams still capture sub-words). Each n-gram's Unicode code points are folded into a 64-bit key,
mixed with SplitMix64 (a fixed integer hash: stable across processes, machines and Python versions,
unlike Python's salted `hash()`), and the mixed value picks a bucket (`h mod dim`) and a sign (top
bit). Signed counts are summed per bucket (Weinberger et al. 2009, "Feature Hashing for Large Scale
Multitask Learning": the sign makes collisions cancel in expectation) and the vector is L2-normalised,
so the dot product of two hashed texts of the same `dim` is a cosine-like lexical overlap. An empty
text hashes to the zero vector.

Everything is vectorised over a batch of texts with numpy (no per-n-gram Python loop), so hashing the
millions of note titles and bodies of a real log stays fast.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from pretrain.importers.config import FeatureSettings

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_BASE = np.uint64(0x110000)  # one more than the largest Unicode code point


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 (wrap-around arithmetic), the stable mixer behind the buckets."""
    with np.errstate(over="ignore"):
        z = (x + _GOLDEN) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * _M1) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * _M2) & _MASK64
        return z ^ (z >> np.uint64(31))


def normalise_text(text: str | None, max_chars: int) -> str:
    if text is None:
        return ""
    return " ".join(str(text).lower().split())[:max_chars]


def hash_texts(texts: Sequence[str | None], dim: int, max_n: int = 3, max_chars: int = 512) -> np.ndarray:
    """(len(texts), dim) float32: L2-normalised signed hashed bag of character 1..max_n-grams."""
    if dim <= 0:
        raise ValueError(f"hash dimension must be positive, got {dim}")
    n_texts = len(texts)
    out = np.zeros((n_texts, dim), np.float64)
    norm = [normalise_text(t, max_chars) for t in texts]
    lengths = np.fromiter((len(t) for t in norm), np.int64, n_texts)
    total = int(lengths.sum())
    if total == 0:
        return out.astype(np.float32)
    cps = np.frombuffer("".join(norm).encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    row = np.repeat(np.arange(n_texts, dtype=np.int64), lengths)
    with np.errstate(over="ignore"):
        for n in range(1, max_n + 1):
            if total < n:
                break
            m = total - n + 1
            key = np.full(m, np.uint64(n), np.uint64)  # the n-gram order is part of the key
            for j in range(n):
                key = (key * _BASE + cps[j : j + m]) & _MASK64
            same_text = row[:m] == row[n - 1 : n - 1 + m]
            h = splitmix64(key[same_text])
            bucket = (h % np.uint64(dim)).astype(np.int64)
            sign = np.where((h >> np.uint64(63)) == np.uint64(1), -1.0, 1.0)
            np.add.at(out, (row[:m][same_text], bucket), sign)
    nrm = np.linalg.norm(out, axis=1, keepdims=True)
    return (out / np.where(nrm > 0, nrm, 1.0)).astype(np.float32)


def query_hashes(
    queries: Sequence[str | None], cfg: FeatureSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(title-width hash, text-width hash, query-feature hash) of each query: the first two are compared
    with the items' hashed titles and bodies, the third is a query feature (the text-width one again
    when the widths agree)."""
    q_title = hash_texts(queries, cfg.title_dim, max_chars=cfg.max_chars)
    q_text = hash_texts(queries, cfg.text_dim, max_chars=cfg.max_chars)
    q_hash = (
        q_text
        if cfg.query_text_dim == cfg.text_dim
        else hash_texts(queries, cfg.query_text_dim, max_chars=cfg.max_chars)
    )
    return q_title, q_text, q_hash


def categorical_onehot(values: Sequence[object], buckets: int) -> np.ndarray:
    """(n, buckets) float32 one-hot of str(value) hashed into `buckets` (None -> all zeros).

    For categorical codes (gender, platform, query_from_type, ...) whose vocabulary is not published:
    hashing (zlib.crc32, stable) needs no vocabulary and works whether the column holds ints or strings.
    """
    out = np.zeros((len(values), buckets), np.float32)
    for i, v in enumerate(values):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            continue
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        out[i, zlib.crc32(str(v).encode("utf-8")) % buckets] = 1.0
    return out
