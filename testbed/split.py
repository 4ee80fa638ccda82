"""The canary split as nginx's split_clients decides it, for tests to predict which side a client
lands on: MurmurHash2 (nginx's ngx_murmur_hash2, seed 0) of the client key, below W percent of
2^32 - 1 (in whole units of 0.01 %) goes to the canary."""
from __future__ import annotations


def murmur2(data: bytes) -> int:
    m, mask = 0x5BD1E995, 0xFFFFFFFF
    n, i = len(data), 0
    h = n & mask
    while n >= 4:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & mask
        k ^= k >> 24
        k = (k * m) & mask
        h = ((h * m) & mask) ^ k
        i, n = i + 4, n - 4
    if n == 3:
        h ^= data[i + 2] << 16
    if n >= 2:
        h ^= data[i + 1] << 8
    if n >= 1:
        h = ((h ^ data[i]) * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    return h ^ (h >> 15)


def in_split(key: str, weight: int) -> bool:
    return murmur2(key.encode()) < weight * 100 * 0xFFFFFFFF // 10000
