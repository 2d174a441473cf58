"""Output path of the engine: masking (also across chunks), the per-target cap, batching, backpressure."""

from __future__ import annotations

import asyncio
import time

from opsconductor_executor.output import MASK, EngineChunk, OutputCollector, SecretMasker


class Sink:
    """What hooks.output received, batch by batch."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[EngineChunk]] = []
        self.delay_s = delay_s
        self.calls_at: list[float] = []

    async def __call__(self, chunks: list[EngineChunk]) -> None:
        self.calls_at.append(time.monotonic())
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        self.batches.append(chunks)

    @property
    def chunks(self) -> list[EngineChunk]:
        return [chunk for batch in self.batches for chunk in batch]

    def text(self, target_id: str = "t1", stream: str = "stdout") -> str:
        return "".join(c.data for c in self.chunks if c.target_id == target_id and c.stream == stream)


async def collect(writes: list[tuple[str, str, str]], **options: object) -> Sink:
    sink = Sink()
    collector = OutputCollector(sink, **options)  # type: ignore[arg-type]
    collector.start()
    for target_id, stream, data in writes:
        await collector.write(target_id, stream, data)  # type: ignore[arg-type]
    collector.end_stream("t1")
    collector.end_stream("t2")
    await collector.close()
    return sink


class TestSecretMasker:
    def test_masks_every_occurrence_longest_first(self) -> None:
        masker = SecretMasker(["abc", "abcdef"])
        assert masker.mask("x abcdef y abc z") == f"x {MASK} y {MASK} z"

    def test_unsafe_tail_is_the_longest_secret_prefix_at_the_end(self) -> None:
        masker = SecretMasker(["hunter2!", "zz"])
        assert masker.unsafe_tail("log: hunt") == 4
        assert masker.unsafe_tail("log: z") == 1
        assert masker.unsafe_tail("log: hunter") == 6
        assert masker.unsafe_tail("log: nothing") == 0
        assert masker.unsafe_tail("") == 0

    def test_repeated_first_character_finds_the_right_start(self) -> None:
        masker = SecretMasker(["aab"])
        assert masker.unsafe_tail("xaaa") == 2  # "aa" could still become "aab"

    def test_lines_of_a_multiline_secret_are_masked_too(self) -> None:
        masker = SecretMasker(["line-one-secret\nline-two-secret"])
        assert masker.mask("got line-two-secret") == f"got {MASK}"

    def test_no_secrets_changes_nothing(self) -> None:
        masker = SecretMasker(["", ""])
        assert not masker
        assert masker.mask("text") == "text"
        assert masker.unsafe_tail("text") == 0


class TestMasking:
    async def test_secret_in_one_chunk(self) -> None:
        sink = await collect([("t1", "stdout", "token=s3cr3t-value\n")], secrets=["s3cr3t-value"])
        assert sink.text() == f"token={MASK}\n"

    async def test_secret_split_across_chunks_never_leaves_in_pieces(self) -> None:
        secret = "s3cr3t-value"
        writes = [("t1", "stdout", "token=s3c"), ("t1", "stdout", "r3t-va"), ("t1", "stdout", "lue done\n")]
        sink = await collect(writes, secrets=[secret])

        assert sink.text() == f"token={MASK} done\n"
        for chunk in sink.chunks:
            for size in range(3, len(secret) + 1):
                assert secret[:size] not in chunk.data

    async def test_every_split_point(self) -> None:
        secret = "pa55word!"
        line = f"a{secret}b{secret}\n"
        for cut in range(len(line) + 1):
            sink = await collect(
                [("t1", "stdout", line[:cut]), ("t1", "stdout", line[cut:])], secrets=[secret]
            )
            assert sink.text() == f"a{MASK}b{MASK}\n", cut

    async def test_held_back_text_that_is_no_secret_comes_out_at_the_end(self) -> None:
        sink = await collect([("t1", "stdout", "ends with s3c")], secrets=["s3cr3t"])
        assert sink.text() == "ends with s3c"

    async def test_streams_and_targets_are_masked_separately(self) -> None:
        secret = "s3cr3t"
        writes = [
            ("t1", "stdout", "s3c"),
            ("t1", "stderr", "r3t"),  # another stream: not the same text
            ("t2", "stdout", "s3cr"),
            ("t2", "stdout", "3t"),
        ]
        sink = await collect(writes, secrets=[secret])
        assert sink.text("t1", "stdout") == "s3c"
        assert sink.text("t1", "stderr") == "r3t"
        assert sink.text("t2", "stdout") == MASK

    async def test_system_lines_are_masked(self) -> None:
        sink = Sink()
        collector = OutputCollector(sink, secrets=["s3cr3t"])
        collector.start()
        collector.system("t1", "failed near s3cr3t")
        await collector.close()
        assert sink.text(stream="system") == f"failed near {MASK}"


class TestCap:
    async def test_output_stops_at_the_cap_with_one_marker(self) -> None:
        writes = [("t1", "stdout", "x" * 400), ("t1", "stderr", "y" * 400), ("t1", "stdout", "z" * 400)]
        sink = await collect(writes, cap_bytes=1000)

        kept = sink.text("t1", "stdout") + sink.text("t1", "stderr")
        assert len(kept.encode()) == 1000
        assert sink.text("t1", "stdout") == "x" * 400 + "z" * 200
        markers = [c for c in sink.chunks if c.stream == "system"]
        assert len(markers) == 1
        assert "truncated" in markers[0].data

    async def test_the_cap_is_per_target(self) -> None:
        writes = [("t1", "stdout", "a" * 150), ("t2", "stdout", "b" * 90)]
        sink = await collect(writes, cap_bytes=100)
        assert sink.text("t1") == "a" * 100
        assert sink.text("t2") == "b" * 90
        assert [c.target_id for c in sink.chunks if c.stream == "system"] == ["t1"]

    async def test_cut_never_splits_a_character(self) -> None:
        sink = await collect([("t1", "stdout", "é" * 10)], cap_bytes=5)  # 2 bytes each
        assert sink.text() == "éé"

    async def test_truncated_flag(self) -> None:
        sink = Sink()
        collector = OutputCollector(sink, cap_bytes=3)
        collector.start()
        await collector.write("t1", "stdout", "ab")
        assert not collector.truncated("t1")
        await collector.write("t1", "stdout", "cd")
        assert collector.truncated("t1")
        assert not collector.truncated("t2")
        await collector.close()


class TestBatching:
    async def test_many_chunks_from_many_targets_become_few_calls(self) -> None:
        sink = Sink()
        collector = OutputCollector(sink, flush_interval_s=0.05)
        collector.start()
        for n in range(300):
            await collector.write(f"t{n % 30}", "stdout", f"line {n}\n")
        await asyncio.sleep(0.3)
        assert len(sink.batches) == 1  # written faster than the interval: one call
        await collector.close()
        assert len(sink.chunks) == 300
        # Order is kept per target.
        assert sink.text("t7") == "".join(f"line {n}\n" for n in range(7, 300, 30))

    async def test_a_full_batch_goes_out_before_the_interval(self) -> None:
        sink = Sink()
        collector = OutputCollector(sink, flush_interval_s=5.0, flush_bytes=1000)
        collector.start()
        await collector.write("t1", "stdout", "x" * 1500)
        await asyncio.sleep(0.05)
        assert len(sink.batches) == 1
        await collector.close()

    async def test_drain_waits_for_delivery(self) -> None:
        sink = Sink(delay_s=0.05)
        collector = OutputCollector(sink, flush_interval_s=5.0)
        collector.start()
        await collector.write("t1", "stdout", "first\n")
        await collector.drain()
        assert sink.text() == "first\n"
        await collector.drain()  # nothing pending: returns at once
        await collector.close()

    async def test_a_failing_sink_does_not_stop_the_writers(self) -> None:
        calls = 0

        async def broken(chunks: list[EngineChunk]) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("database down")

        collector = OutputCollector(broken, flush_interval_s=0.01)
        collector.start()
        await collector.write("t1", "stdout", "a")
        await collector.drain()
        await collector.write("t1", "stdout", "b")
        await collector.close()
        assert calls == 2


class TestBackpressure:
    async def test_writers_wait_while_a_slow_sink_holds_a_full_buffer(self) -> None:
        sink = Sink(delay_s=0.2)
        collector = OutputCollector(sink, flush_interval_s=0.01, flush_bytes=1000, buffer_bytes=4000)
        collector.start()
        started = time.monotonic()
        for _ in range(40):
            await collector.write("t1", "stdout", "x" * 1000)
        elapsed = time.monotonic() - started
        await collector.close()

        assert sink.text() == "x" * 40_000  # nothing lost
        assert elapsed >= 0.6  # the writer was held back, not buffered without limit
        for batch in sink.batches:
            assert sum(len(c.data) for c in batch) <= 4000 + 1000
