"""OutputBuffer: bounded, unsent output never dropped, sent output kept for replay."""

from __future__ import annotations

import pytest

from kruntimes_runtime.errors import OutOfRange
from kruntimes_runtime.outbuf import OutputBuffer


def test_room_shrinks_until_sent() -> None:
    buf = OutputBuffer(10, "stdout")  # retains the last 5 sent bytes
    assert buf.room() == 10
    buf.append(b"abcdef")
    assert buf.room() == 4
    buf.append(b"ghij")
    assert buf.room() == 0  # nobody read: the pipe must not be read any more
    with pytest.raises(ValueError):
        buf.append(b"k")
    buf.mark_sent(4)
    assert buf.room() == 0  # 0..4 may still be in flight to the reader
    buf.mark_sent(9)
    assert buf.room() == 4  # 4..9 retained, 0..4 may go


def test_eviction_keeps_unsent_and_in_flight_bytes() -> None:
    buf = OutputBuffer(10, "stdout")
    buf.append(b"0123456789")
    buf.mark_sent(10)
    buf.append(b"ABCDE")  # evicts 01234; 56789 (sent, retained) stay
    assert (buf.start, buf.end) == (5, 15)
    assert buf.room() == 0
    assert buf.read(5, 100) == b"56789ABCDE"
    assert buf.read(6, 3) == b"678"
    buf.check_offset(5, "stdout_offset")
    with pytest.raises(OutOfRange, match=r"stdout_offset 4 is older than the oldest stdout byte still buffered \(5"):
        buf.check_offset(4, "stdout_offset")
    with pytest.raises(OutOfRange, match=r"stdout_offset 16 is past the end of stdout \(15 bytes so far\)"):
        buf.check_offset(16, "stdout_offset")


def test_rewind_makes_bytes_unsent_again() -> None:
    buf = OutputBuffer(8, "stderr")
    buf.append(b"abcdefgh")
    buf.mark_sent(8)
    assert buf.room() == 4
    buf.rewind(2)
    assert buf.room() == 0  # a re-attach from 2 must receive 2..8 before more is read
    buf.rewind(6)
    assert buf.room() == 2
    with pytest.raises(OutOfRange):
        buf.rewind(9)


def test_long_stream_stays_bounded() -> None:
    buf = OutputBuffer(1024, "stdout")
    total = 0
    for i in range(5000):
        data = bytes([i % 251]) * 100
        n = min(len(data), buf.room())
        buf.append(data[:n])
        total += n
        buf.mark_sent(buf.end)
        assert buf.end - buf.start <= 1024
    assert buf.end == total == 500_000


def test_reads_span_chunks_and_trimmed_chunks() -> None:
    buf = OutputBuffer(12, "stdout")  # retains 6 sent bytes
    for piece in (b"abcd", b"efgh", b"ijkl"):
        buf.append(piece)
    assert buf.read(0, 100) == b"abcdefghijkl"
    assert buf.read(2, 7) == b"cdefghi"
    assert buf.read(4, 4) == b"efgh"
    buf.mark_sent(12)
    buf.append(b"mnopq")  # evicts abcd and the "e" of efgh
    assert (buf.start, buf.end) == (5, 17)
    assert buf.read(5, 100) == b"fghijklmnopq"
    assert buf.read(16, 100) == b"q"
    assert buf.read(17, 100) == b""
