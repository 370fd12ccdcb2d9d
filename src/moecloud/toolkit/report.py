"""The evaluation's outputs: a Rich table for the terminal and an HTML report with two inline SVG
plots (accuracy vs cost, latency)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from rich.table import Table

from moecloud.toolkit.evaluate import ModelResult

_W, _H, _PAD = 520, 300, 50


def _scale(value: float, low: float, high: float, out_low: float, out_high: float) -> float:
    span = (high - low) or 1.0
    return out_low + (value - low) / span * (out_high - out_low)


def results_table(results: Sequence[ModelResult], chosen: ModelResult | None, title: str) -> Table:
    """One row per model; the recommended one is starred."""
    table = Table(title=title)
    table.add_column("model", overflow="fold")
    for name in ("accuracy", "p50 ms", "p95 ms", "tok/s", "cost/1k req", "errors"):
        table.add_column(name, justify="right", no_wrap=True)
    for r in results:
        table.add_row(("* " if r is chosen else "") + r.model, f"{r.accuracy:.1%}", f"{r.latency_p50 * 1000:.0f}",
                      f"{r.latency_p95 * 1000:.0f}", f"{r.tokens_per_second:.1f}", str(r.cost_per_1k), str(r.errors))
    return table


def accuracy_cost_svg(results: Sequence[ModelResult], min_accuracy: float) -> str:
    costs = [float(r.cost_per_1k) for r in results]
    high = max(costs + [1e-9]) * 1.15
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H}" role="img" '
             'aria-label="accuracy vs cost">',
             f'<line x1="{_PAD}" y1="{_H - _PAD}" x2="{_W - 10}" y2="{_H - _PAD}" stroke="#444"/>',
             f'<line x1="{_PAD}" y1="10" x2="{_PAD}" y2="{_H - _PAD}" stroke="#444"/>',
             f'<text x="{_W / 2}" y="{_H - 12}" text-anchor="middle">cost per 1,000 requests</text>',
             f'<text x="14" y="{_H / 2}" transform="rotate(-90 14 {_H / 2})" text-anchor="middle">accuracy</text>']
    bar = _scale(min_accuracy, 0, 1, _H - _PAD, 10)
    parts.append(f'<line x1="{_PAD}" y1="{bar:.1f}" x2="{_W - 10}" y2="{bar:.1f}" stroke="#c33" '
                 f'stroke-dasharray="4 3"/><text x="{_W - 12}" y="{bar - 4:.1f}" text-anchor="end" '
                 f'fill="#c33">bar {min_accuracy:.0%}</text>')
    for r, cost in zip(results, costs, strict=True):
        x, y = _scale(cost, 0, high, _PAD, _W - 10), _scale(r.accuracy, 0, 1, _H - _PAD, 10)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="#36c"/>'
                     f'<text x="{x + 7:.1f}" y="{y - 6:.1f}">{escape(r.model)}</text>')
    parts.append(f'<text x="{_PAD}" y="{_H - _PAD + 16}">0</text>'
                 f'<text x="{_W - 10}" y="{_H - _PAD + 16}" text-anchor="end">{high:.4f}</text></svg>')
    return "".join(parts)


def latency_svg(results: Sequence[ModelResult]) -> str:
    high = max([r.latency_p95 for r in results] + [1e-9]) * 1.1
    row = 28
    height = row * len(results) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{height}" role="img" '
             'aria-label="latency p50 and p95">']
    for i, r in enumerate(results):
        y = 10 + i * row
        p50 = _scale(r.latency_p50, 0, high, 0, _W - 170)
        p95 = _scale(r.latency_p95, 0, high, 0, _W - 170)
        parts.append(f'<text x="0" y="{y + 14}">{escape(r.model[:18])}</text>'
                     f'<rect x="140" y="{y}" width="{p95:.1f}" height="18" fill="#9bd"/>'
                     f'<rect x="140" y="{y}" width="{p50:.1f}" height="18" fill="#36c"/>'
                     f'<text x="{144 + p95:.1f}" y="{y + 14}">{r.latency_p50 * 1000:.0f} / '
                     f'{r.latency_p95 * 1000:.0f} ms</text>')
    parts.append(f'<text x="140" y="{height - 8}">p50 (dark) and p95 (light) latency per request</text></svg>')
    return "".join(parts)


def html_report(suite: str, results: Sequence[ModelResult], min_accuracy: float,
                chosen: ModelResult | None) -> str:
    header = "".join(f"<th>{h}</th>" for h in ("model", "accuracy", "p50 ms", "p95 ms", "tokens/s",
                                                "cost / 1k requests", "errors"))
    rows = "".join(
        f"<tr{' class=chosen' if chosen is r else ''}><td>{escape(r.model)}</td><td>{r.accuracy:.1%}</td>"
        f"<td>{r.latency_p50 * 1000:.0f}</td><td>{r.latency_p95 * 1000:.0f}</td>"
        f"<td>{r.tokens_per_second:.1f}</td><td>{r.cost_per_1k}</td><td>{r.errors}</td></tr>"
        for r in results
    )
    verdict = (f"Recommended: <b>{escape(chosen.model)}</b>, the cheapest model with accuracy ≥ {min_accuracy:.0%}."
               if chosen else f"No model reaches the accuracy bar of {min_accuracy:.0%}.")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>moecloud eval: {escape(suite)}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "tr.chosen{background:#e6f0ff}svg text{font-size:12px}</style></head><body>"
        f"<h1>Evaluation of suite {escape(suite)}</h1><p>{verdict}</p>"
        f"<table><tr>{header}</tr>{rows}</table>"
        f"<h2>Accuracy vs cost</h2>{accuracy_cost_svg(results, min_accuracy)}"
        f"<h2>Latency</h2>{latency_svg(results)}</body></html>"
    )
