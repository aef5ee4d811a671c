"""Which rows and columns of a converted module one tensor-parallel rank takes, or why none.

Pure integer rules, shared by the reference loader and the vLLM plugin:
- FORMAT.md §8: a column-parallel rank slices N at 64-column boundaries, a row-parallel rank
  slices K at 16-row boundaries (one packed row of the Marlin weight is 16 values of K);
  only v2 is served, so v1's 32-row / 128-column scale rule never applies.
- the Marlin FP4 kernel runs an (N, K) problem only on its tiles: N % 64 == 0 with
  K % 128 == 0, or N % 128 == 0 with K % 64 == 0 (the two shapes FORMAT.md §4's v2 padding
  chooses between), so a rank whose slice misses both is refused too, saying so.
- how vLLM splits a layer across ranks: even splits of N (column-parallel) or K
  (row-parallel); for q/k/v, whole heads, with k/v heads replicated when there are fewer
  KV heads than ranks (QKVParallelLinear's num_kv_head_replicas).
"""

from __future__ import annotations

from dataclasses import dataclass

from .checkpoint import CheckpointError

TILE_N = 64  # columns per Marlin permutation chunk (FORMAT.md §2)
TILE_K = 16  # values of K per packed row (FORMAT.md §2)


class PartitionError(CheckpointError):
    """A tensor-parallel split the shapes do not allow; the message names the layer and why."""


@dataclass(frozen=True)
class Span:
    """A half-open range [start, stop) of logical rows or columns."""

    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


def round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def v2_padded_shape(n: int, k: int) -> tuple[int, int]:
    """(Np, Kp) of FORMAT.md §4 v2: the smaller-area kernel tile shape covering (n, k)."""
    wide_k = (round_up(n, 64), round_up(k, 128))
    wide_n = (round_up(n, 128), round_up(k, 64))
    return min(wide_k, wide_n, key=lambda shape: (shape[0] * shape[1], shape[0] + shape[1]))


def check_kernel_tiles(layer: str, n: int, k: int) -> None:
    """Refuse an (N, K) problem the Marlin FP4 kernel has no tile for."""
    if (n % 64 == 0 and k % 128 == 0) or (n % 128 == 0 and k % 64 == 0):
        return
    raise PartitionError(
        f"{layer}: a rank's problem N {n} x K {k} has no Marlin tile (needs N % 64 == 0 with K % 128 == 0, "
        "or N % 128 == 0 with K % 64 == 0)"
    )


def even_split(layer: str, what: str, size: int, boundary: int, tp_size: int, tp_rank: int) -> Span:
    """Rank `tp_rank`'s share of `size` split evenly over `tp_size` ranks at `boundary` multiples."""
    if not 0 <= tp_rank < tp_size:
        raise PartitionError(f"{layer}: rank {tp_rank} is not in a tensor-parallel group of {tp_size}")
    if size % tp_size != 0:
        raise PartitionError(f"{layer}: {what} {size} does not split into {tp_size} equal parts")
    share = size // tp_size
    if tp_size > 1 and share % boundary != 0:
        raise PartitionError(
            f"{layer}: tensor parallel size {tp_size} gives {what} {share} per rank, "
            f"not a multiple of {boundary} (a Marlin {'column chunk' if boundary == TILE_N else 'packed row'})"
        )
    return Span(tp_rank * share, (tp_rank + 1) * share)


def column_span(layer: str, n: int, tp_size: int, tp_rank: int) -> Span:
    """A column-parallel (or merged gate/up) part: N split evenly at 64-column boundaries."""
    return even_split(layer, "N", n, TILE_N, tp_size, tp_rank)


def row_span(layer: str, k: int, kp: int, tp_size: int, tp_rank: int) -> Span:
    """A row-parallel layer: K split evenly at 16-row boundaries; K padding only without a split."""
    if tp_size > 1 and kp != k:
        raise PartitionError(
            f"{layer}: K {k} is padded to {kp}; a padded K cannot be split over {tp_size} ranks"
        )
    return even_split(layer, "K", k, TILE_K, tp_size, tp_rank)


def qkv_spans(
    layer: str,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    tp_size: int,
    tp_rank: int,
) -> tuple[Span, Span, Span]:
    """Column spans of q, k and v for one rank: whole heads, KV heads replicated as vLLM does."""
    if num_heads % tp_size != 0:
        raise PartitionError(f"{layer}: {num_heads} attention heads do not split over {tp_size} ranks")
    if num_kv_heads >= tp_size:
        if num_kv_heads % tp_size != 0:
            raise PartitionError(f"{layer}: {num_kv_heads} KV heads do not split over {tp_size} ranks")
        kv_per_rank, kv_rank = num_kv_heads // tp_size, tp_rank
    else:
        if tp_size % num_kv_heads != 0:
            raise PartitionError(f"{layer}: {num_kv_heads} KV heads cannot be replicated over {tp_size} ranks")
        kv_per_rank, kv_rank = 1, tp_rank // (tp_size // num_kv_heads)
    q_share = num_heads // tp_size * head_dim
    kv_share = kv_per_rank * head_dim
    spans = (
        Span(tp_rank * q_share, (tp_rank + 1) * q_share),
        Span(kv_rank * kv_share, (kv_rank + 1) * kv_share),
        Span(kv_rank * kv_share, (kv_rank + 1) * kv_share),
    )
    if tp_size > 1:
        for name, span in zip("qkv", spans):
            if span.start % TILE_N or span.size % TILE_N:
                raise PartitionError(
                    f"{layer}: tensor parallel size {tp_size} gives {name} columns [{span.start}, {span.stop}), "
                    f"not on {TILE_N}-column boundaries"
                )
    return spans
