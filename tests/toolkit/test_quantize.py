from __future__ import annotations

from moecloud.toolkit.quantize import int8_report
from moecloud.toolkit.tasks import load_jsonl, select


def test_int8_round_trip_keeps_logits_and_shrinks_weights(trained, small_suite):
    examples = select(load_jsonl(small_suite), split="test")[:12]
    report = int8_report(trained.out, examples)
    assert report.logits_relative_error < 0.05
    assert report.memory_ratio < 0.6  # projections and experts go from 4 bytes to 1 (+ a scale per row)
    assert abs(report.accuracy_change) <= 0.25
    assert report.int8.output_tokens > 0 and report.original.tokens_per_second > 0
