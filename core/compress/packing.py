"""Bit packing and entropy coding: how integer codes become bytes. Pure tensor functions, no model knowledge.

`pack_bits` writes unsigned b-bit codes as a little-endian bit stream in uint8 (two 4-bit codes a
byte, 8 codes of b bits in b bytes); `huffman_encode` stores bytes Huffman-coded (deflate without
string matching, with a checksum), which pays where codes are unevenly used (an embedding's 4-bit
codes carry ~2.3 bits of entropy each).
"""

from __future__ import annotations

import zlib

import torch
import torch.nn.functional as F


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes that `count` codes of `bits` bits take once packed: ceil(count * bits / 8)."""
    return -(-count * bits // 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (< 2**bits, any shape) into a flat uint8 tensor, little-endian: a bit stream."""
    if not 1 <= bits <= 8:
        raise ValueError(f"pack_bits: bits must be 1..8, got {bits}")
    flat = codes.reshape(-1)
    if bits == 8:
        return flat.to(torch.uint8).clone()
    if 8 % bits == 0:  # 1, 2 or 4 bits: whole codes per byte, the same stream built bytewise (fast)
        per = 8 // bits
        chunks = F.pad(flat.to(torch.uint8) & ((1 << bits) - 1), (0, (-flat.numel()) % per)).view(-1, per)
        packed = chunks[:, 0].clone()
        for i in range(1, per):
            packed |= chunks[:, i] << (bits * i)
        return packed
    pad = (-flat.numel()) % 8
    chunks = F.pad(flat.to(torch.int64), (0, pad)).view(-1, 8)
    word = torch.zeros(chunks.shape[0], dtype=torch.int64)
    for i in range(8):
        word |= (chunks[:, i] & ((1 << bits) - 1)) << (bits * i)
    packed = torch.stack([(word >> (8 * j)) & 0xFF for j in range(bits)], dim=1).to(torch.uint8).reshape(-1)
    return packed[: packed_nbytes(flat.numel(), bits)].clone()  # the cut bytes hold only padding


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """Inverse of pack_bits: the first `count` codes as a flat uint8 tensor."""
    if not 1 <= bits <= 8:
        raise ValueError(f"unpack_bits: bits must be 1..8, got {bits}")
    if packed.dtype != torch.uint8 or packed.numel() != packed_nbytes(count, bits):
        raise ValueError(
            f"unpack_bits: {count} codes of {bits} bits need {packed_nbytes(count, bits)} "
            f"uint8 bytes, got {packed.numel()} {packed.dtype}"
        )
    if bits == 8:
        return packed.reshape(-1).clone()
    if 8 % bits == 0:
        mask = (1 << bits) - 1
        codes = torch.stack([(packed >> (bits * i)) & mask for i in range(8 // bits)], dim=1)
        return codes.reshape(-1)[:count]
    chunks = F.pad(packed.to(torch.int64), (0, (-packed.numel()) % bits)).view(-1, bits)
    word = torch.zeros(chunks.shape[0], dtype=torch.int64)
    for j in range(bits):
        word |= chunks[:, j] << (8 * j)
    codes = torch.stack([(word >> (bits * i)) & ((1 << bits) - 1) for i in range(8)], dim=1)
    return codes.reshape(-1)[:count].to(torch.uint8)


def huffman_encode(data: bytes) -> bytes:
    """`data` Huffman-coded (zlib stream, Huffman only: no string matching)."""
    coder = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)
    return coder.compress(data) + coder.flush()


def huffman_decode(data: bytes, length: int) -> bytes:
    """The `length` bytes `huffman_encode` coded; ValueError for bad data or another length. Bounded: a bad
    file cannot balloon in memory."""
    decoder = zlib.decompressobj()
    try:
        raw = decoder.decompress(data, length + 1)
    except zlib.error as exc:
        raise ValueError(f"is not valid deflate data: {exc}") from None
    if len(raw) != length or not decoder.eof:
        raise ValueError(f"decodes to {len(raw)}{'' if decoder.eof else '+'} bytes, expected {length}")
    return raw
