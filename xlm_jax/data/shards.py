"""Virtual shards: which rows of every global batch, and which part of the corpus, a process owns.

The corpus is cut into S = `data.shards` shards (0: one per row of the global batch).
Row j of every global batch belongs to shard j * S // B; process p of P owns rows
[p * B / P, (p + 1) * B / P), hence exactly shards [p * S / P, (p + 1) * S / P). What a
shard holds depends on the data and S only, never on P, so any process count that
divides S builds the same global batches, and a process reads only its shards.

A plain text file is cut into S byte ranges, and a line belongs to the range that holds
its first byte (Hadoop's TextInputFormat rule): a process seeks to its ranges and reads
their lines only, plus the rest of each range's last line.
"""
import dataclasses
from typing import BinaryIO

from xlm_jax.errors import ConfigError

_CHUNK = 8192   # bytes read at a time while looking for the line boundaries around a range


def num_shards(config) -> int:
    return config.data.shards or config.train.batch_size


def check_shards(config, process_count: int) -> int:
    """S, once it divides train.batch_size and is a multiple of the process count."""
    batch, shards = config.train.batch_size, num_shards(config)
    if batch % process_count:
        raise ConfigError(f"config field `train.batch_size`: {batch} is not divisible by the {process_count} "
                          f"processes; use a multiple of {process_count}")
    if batch % shards or shards % process_count:
        fits = [s for s in range(process_count, batch + 1, process_count) if batch % s == 0]
        raise ConfigError(f"config field `data.shards`: {shards} shards must divide train.batch_size={batch} "
                          f"and be a multiple of the {process_count} process(es); use one of "
                          f"{', '.join(map(str, fits))} (0 = {batch}, one per row)")
    return shards


def owned_shards(process_index: int, process_count: int, shards: int) -> range:
    """The shards a process reads: those of its rows."""
    return range(process_index * shards // process_count, (process_index + 1) * shards // process_count)


def row_shard(row: int, batch: int, shards: int) -> int:
    return row * shards // batch


@dataclasses.dataclass(frozen=True)
class Part:
    """Shard `index` of `count`: which lines of one file (or dataset) it gets, by `how`.

    "bytes": the lines starting in byte range `index` of `count` (plain files);
    "whole": the whole file (a .gz file given whole to one shard, or S = 1);
    "lines": lines index, index + count, ... (a .gz file shared by shards: it cannot seek).
    """
    index: int
    count: int
    how: str = "bytes"

    def byte_range(self, size: int) -> tuple[int, int]:
        return size * self.index // self.count, size * (self.index + 1) // self.count

    def describe(self) -> str:
        if self.how == "whole" or self.count == 1:
            return ""
        if self.how == "lines":
            return f" (every {self.count}th line from line {self.index + 1})"
        return f" (byte range {self.index + 1} of {self.count})"


def read_lines(f: BinaryIO, start: int, end: int, budget: int | None = None) -> tuple[int, bytes, bool]:
    """(offset, data, complete): the lines of binary file f whose first byte lies in [start, end).

    Reads from start - 1 (to see whether a line starts at `start`) to the end of the last
    line starting before `end`. With `budget`, stops at the first line end past `budget`
    bytes: `complete` says whether that was every line of the range.
    """
    offset = max(start - 1, 0)
    f.seek(offset)
    buffer = b""
    if start > 0:   # the line holding byte start - 1 belongs to an earlier range: skip to its end
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                return offset, b"", True
            cut = chunk.find(b"\n")
            if cut >= 0:
                offset, buffer = offset + cut + 1, chunk[cut + 1:]
                break
            offset += len(chunk)
    if offset >= end:
        return offset, b"", True
    stop = end if budget is None else min(end, offset + budget)
    if len(buffer) < stop - offset:
        buffer += f.read(stop - offset - len(buffer))
    searched = stop - 1 - offset      # the last line starting before `stop` ends at the first newline from here
    while True:
        cut = buffer.find(b"\n", searched)
        if cut >= 0:
            data = buffer[:cut + 1]
            break
        searched = max(searched, len(buffer))
        chunk = f.read(_CHUNK)
        if not chunk:
            data = buffer     # the file's last line, without a newline
            break
        buffer += chunk
    return offset, data, offset + len(data) >= end
