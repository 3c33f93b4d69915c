"""The ids that have a result line, as the Batch API path keeps them: the set the output held
when the run started, and one bit per input line for what this run wrote. A set of a million
ids costs about 90 MB; their bits cost 125 KB, which keeps a 1,000,000-line `--via batch` job
within the memory the sync path needs (which never grows its set).

A bit needs the request's line number: while a part is merged, `collecting` maps its ids to
their lines (from the part's `.lines` file), so the collector and the outcome, which ask by
id, see the bits of that part; planning asks by id and line (`has`). An id written with no
line known (a bad input line failed by planning) goes into the set itself."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


class DoneIds(set[str]):
    """`in`, `add` and `len` as a set of every id with a result line. Iterating yields only the
    ids the set itself holds: nothing iterates it (planning reads the input instead)."""

    def __init__(self, before: set[str], ids: Iterable[str] = ()) -> None:
        super().__init__(ids)
        self._before = before  # the output's ids when the run started: shared, never changed
        self._bits = bytearray()
        self._marked = 0
        self._part: Mapping[str, int] = {}

    def collecting(self, lines: Mapping[str, int]) -> None:
        """The part being merged: its ids and their input line numbers."""
        self._part = lines

    def has(self, cid: str, line_no: int) -> bool:
        return self._bit(line_no) or set.__contains__(self, cid) or cid in self._before

    def __contains__(self, cid: object) -> bool:
        if set.__contains__(self, cid) or cid in self._before:
            return True
        line_no = self._part.get(cid) if isinstance(cid, str) else None
        return line_no is not None and self._bit(line_no)

    def add(self, cid: str) -> None:
        line_no = self._part.get(cid)
        if line_no is None:
            super().add(cid)
        elif not self._bit(line_no):
            byte = line_no >> 3
            if byte >= len(self._bits):
                self._bits.extend(bytes(byte + 1 - len(self._bits) + 4096))
            self._bits[byte] |= 1 << (line_no & 7)
            self._marked += 1

    def __len__(self) -> int:
        return set.__len__(self) + len(self._before) + self._marked

    def _bit(self, line_no: int) -> bool:
        byte = line_no >> 3
        return byte < len(self._bits) and bool(self._bits[byte] & (1 << (line_no & 7)))
