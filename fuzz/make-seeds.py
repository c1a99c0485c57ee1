#!/usr/bin/env python3
"""Writes the seed inputs of fuzz/corpus/<target>/seed-* (run from anywhere; the files
are committed). Each seed is a well-formed case the fuzzer mutates from: a correct
driver's requests laid out as the entry points in runtime/vmm/src/fuzzing.rs and
agent/protocol/src/fuzzing.rs expect them."""
import json
import os
import struct

here = os.path.dirname(os.path.abspath(__file__))

def out(target, name, data):
    d = os.path.join(here, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

MEM = 0x2000  # seeds need only the first pages of the 64 KiB guest memory
NEXT, WRITE = 1, 2

def mem_with(queues):
    """queues: {q: [descriptors]} with descriptors (addr, len, flags, next); one avail
    entry (head 0) per queue."""
    m = bytearray(MEM)
    for q, descs in queues.items():
        base = q * 0x400
        for i, (addr, ln, flags, nxt) in enumerate(descs):
            struct.pack_into("<QIHH", m, base + 16 * i, addr, ln, flags, nxt)
        struct.pack_into("<HHH", m, base + 0x100, 0, 1, 0)
    return m

# virtio-blk: header, data, status byte.
for name, kind, data_flags, data_len in [
    ("read", 0, WRITE, 512), ("write", 1, 0, 512), ("flush", 4, 0, 0), ("get-id", 8, WRITE, 20),
]:
    descs = [(0x1000, 16, NEXT, 1)]
    if data_len:
        descs.append((0x1100, data_len, data_flags | NEXT, 2))
        descs.append((0x1400, 1, WRITE, 0))
    else:
        descs[0] = (0x1000, 16, NEXT, 1)
        descs.append((0x1400, 1, WRITE, 0))
    m = mem_with({0: descs})
    struct.pack_into("<IIQ", m, 0x1000, kind, 0, 1)
    out("blk", name, bytes(m))

# virtio-vsock: a REQUEST to host port 5000 on tx, one rx buffer.
def vsock_hdr(op, length=0, src_port=1234, dst_port=5000):
    return struct.pack("<QQIIIHHIII", 3, 2, src_port, dst_port, length, 1, op, 0, 65536, 0)

for name, op, payload in [("request", 1, b""), ("rw", 5, b"hello"), ("rst", 3, b""),
                          ("shutdown", 4, b""), ("credit-request", 7, b"")]:
    tx = [(0x1000, 44, NEXT if payload else 0, 1)]
    if payload:
        tx.append((0x1100, len(payload), 0, 0))
    m = mem_with({0: [(0x1800, 44 + 256, WRITE, 0)], 1: tx})
    m[0x1000:0x1000 + 44] = vsock_hdr(op, len(payload))
    m[0x1100:0x1100 + len(payload)] = payload
    out("vsock", name, bytes(m))

# virtio-mmio: 4 KiB of memory, then a correct driver's register writes (8 bytes each).
def op(write, width_log2, offset, value, kick=0):
    return struct.pack("<BHBI", (1 if write else 0) | (width_log2 << 1), offset, kick, value)

ops = b"".join([
    op(1, 2, 0x070, 3), op(1, 2, 0x024, 1), op(1, 2, 0x020, 1), op(1, 2, 0x070, 11),
    op(1, 2, 0x030, 0), op(1, 2, 0x038, 16), op(1, 2, 0x080, 0), op(1, 2, 0x090, 0x100),
    op(1, 2, 0x0a0, 0x200), op(1, 2, 0x044, 1), op(1, 2, 0x070, 15), op(1, 2, 0x050, 0, kick=1),
    op(0, 2, 0x060, 0), op(1, 2, 0x064, 1), op(0, 0, 0x100, 0), op(1, 2, 0x070, 0),
])
out("mmio", "bring-up-and-reset", bytes(mem_with({0: [(0x1000, 16, 0, 0)]})[:0x1000]) + ops)

def frames(*msgs):
    b = b""
    for m in msgs:
        body = json.dumps(m).encode()
        b += struct.pack(">I", len(body)) + body
    return b

out("protocol_agent", "requests", frames(
    {"id": 1, "body": {"type": "hello", "version": 2}},
    {"id": 2, "body": {"type": "signal", "exec_id": "c", "signal": 15, "all": False}},
    {"id": 3, "body": {"type": "exec", "exec_id": "e", "argv": ["sh"], "env": [], "cwd": "/",
                       "root": None, "stdio": {"port": 3000, "stdin": True, "stdout": True,
                                                "stderr": True, "terminal": False}}},
    {"id": 4, "body": {"type": "shutdown"}},
))
out("protocol_host", "responses", frames(
    {"id": 1, "body": {"type": "hello", "version": 2, "kernel_release": "6.1"}},
    {"id": 2, "body": {"type": "started", "pid": 7}},
    {"id": 3, "body": {"type": "exited", "status": {"signal": 9}}},
    {"id": 4, "body": {"type": "error", "message": "no"}},
))
out("protocol_host", "stream-hello", frames({"exec_id": "c", "stream": "stdout"}))
