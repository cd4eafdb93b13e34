#!/usr/bin/env python3
"""Writes the seed corpus for the data mover's frame decoder: one valid frame of every kind
and some near misses (protobuf encoded by hand, so no protobuf package is needed)."""
import os

def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])

def field(num, payload):  # length-delimited
    return varint(num << 3 | 2) + varint(len(payload)) + payload

def uint(num, v):
    return varint(num << 3) + varint(v)

ident = bytes(range(32))
spec = b'{"kind":"Volume","name":"web-1","source":"/dev/sda","volume_size":1048576,"block_size":"1M","compression":"optimal","parent":null,"snapshot":"none","consistency":"crash"}'
stats = b'{"source_bytes":0,"read_bytes":0,"zero_bytes":0,"unchanged_bytes":0,"new_bytes":0,"stored_bytes":0,"duration_s":0.0}'
seeds = {
    "open": field(1, uint(1, 1) + field(2, b"ab" * 32) + uint(3, 0)),
    "open-stream-3": field(1, uint(1, 1) + field(2, b"ab" * 32) + uint(3, 3)),
    "latest": field(2, b"web-1-disk"),
    "latest-bad-name": field(2, b"../etc"),
    "fetch-index": field(3, b"20261125T093000Z-3f2a9c"),
    "fetch-index-bad": field(3, b"not/an id"),
    "fetch-chunk": field(4, ident),
    "fetch-chunk-short": field(4, ident[:5]),
    "query": field(5, field(1, ident * 3)),
    "query-ragged": field(5, field(1, ident + b"x")),
    "put": field(6, field(1, ident) + field(2, b"\x01" * 64)),
    "put-tiny": field(6, field(1, ident) + field(2, b"\x01")),
    "begin": field(7, spec),
    "begin-garbage": field(7, b"{not json"),
    "blocks": field(8, b"\x00" * 64),
    "blocks-ragged": field(8, b"\x00" * 33),
    "commit": field(9, field(1, stats)),
    "commit-files": field(9, field(1, stats) + uint(2, 1) + field(3, ident) + uint(4, 77) + field(5, b'{"files":1}')),
    "flush": field(10, b""),
    "empty": b"",
    "truncated": field(6, field(1, ident) + field(2, b"\x01" * 64))[:-10],
    "huge-length": varint(6 << 3 | 2) + varint(1 << 40),
}
out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "frames")
os.makedirs(out, exist_ok=True)
for name, data in seeds.items():
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)
print(f"{len(seeds)} seeds in {out}")
