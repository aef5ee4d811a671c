"""Undo the Marlin FP4 layout in pure torch: packed weight -> codes, processed scales -> values.

Each function restates one step of docs/FORMAT.md §2/§3 in reverse; they are written from
that text alone so that they check marlin-fp4's converter instead of mirroring it.
"""

from __future__ import annotations

import torch

from .fp_codes import s0e5m3_values

CHUNK = 1024  # codes of one 64-column chunk of one packed row (16 x 64)


def weight_permutation() -> torch.Tensor:
    """FORMAT.md §2 step 2: PERM[i] = the tile position that output position i of a chunk takes."""
    perm: list[int] = []
    for thread in range(32):
        col = thread // 4
        rows = [2 * (thread % 4), 2 * (thread % 4) + 1, 2 * (thread % 4) + 8, 2 * (thread % 4) + 9]
        base = [16 * row + col + 8 * block for block in (0, 1) for row in rows]
        for offset in (0, 256, 512, 768):
            perm.extend(position + offset for position in base)
    reorder = (0, 2, 4, 6, 1, 3, 5, 7)
    out = []
    for run in range(0, CHUNK, 8):
        out.extend(perm[run + j] for j in reorder)
    return torch.tensor(out, dtype=torch.long)


def unpack_weight(weight: torch.Tensor) -> torch.Tensor:
    """Marlin I32 [K/16, 2N] -> 4-bit codes q[k, n] as uint8 [K, N] (FORMAT.md §2 in reverse)."""
    rows, words = weight.shape
    n = words // 2
    if n % 64:
        raise ValueError(f"a Marlin weight has a multiple of 128 words per row, not {words}")
    # Step 3 in reverse: word w holds positions 8w..8w+7, position 8w+t in bits 4t..4t+3.
    shifts = torch.arange(8, dtype=torch.int32) * 4
    permuted = ((weight.to(torch.int32).unsqueeze(-1) >> shifts) & 0xF).reshape(rows, n // 64, CHUNK)
    # Step 2 in reverse: output position i of a chunk came from tile position PERM[i].
    tile = torch.empty_like(permuted)
    tile[:, :, weight_permutation()] = permuted
    # Step 1 in reverse: tile position j = (n/16)*256 + (k%16)*16 + (n%16) within row r = k/16.
    tile = tile.reshape(rows, n // 16, 16, 16)  # [r, n/16, k%16, n%16]
    codes = tile.permute(0, 2, 1, 3).reshape(rows * 16, n)  # [k, n]
    return codes.to(torch.uint8)


def scale_permutation() -> torch.Tensor:
    """FORMAT.md §3 step 2: SP[p] = p/8 + 8*(p%8), an 8x8 transpose within 64 columns."""
    return torch.tensor([p // 8 + 8 * (p % 8) for p in range(64)], dtype=torch.long)


def decode_scales(raw: torch.Tensor) -> torch.Tensor:
    """Processed v2 scales bytes [G, N] -> float32 s[g, n] (block scale times the layer's sf)."""
    groups, n = raw.shape
    values = s0e5m3_values(raw)
    # Step 4 in reverse: within each run of 4 the order [0, 2, 1, 3] is its own inverse.
    values = values.reshape(-1, 4)[:, [0, 2, 1, 3]].reshape(groups, n)
    # Step 2 in reverse: out[g, 64c + p] = s[g, 64c + SP[p]].
    chunks = values.reshape(groups, n // 64, 64)
    restored = torch.empty_like(chunks)
    restored[:, :, scale_permutation()] = chunks
    return restored.reshape(groups, n)
