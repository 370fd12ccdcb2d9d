"""A report as HTML (self-contained: no external assets) and PDF (reportlab; Chinese set in the built-in CID font
STSong-Light, so no font file is needed), and the files `moecloud compliance report` writes."""

from __future__ import annotations

import json
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from xml.sax.saxutils import escape

from jinja2 import Environment
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.platypus import Flowable, Paragraph, SimpleDocTemplate, Spacer, Table, TableStyle

from moecloud.toolkit.compliance.model import LANGS, Lang, Report, Text, words

CHINESE_FONT = "STSong-Light"
LABELS = {
    "title": Text("Compliance report: MLPS 2.0 level 3, technical controls", "等级保护 2.0 第三级技术要求合规报告"),
    "created": Text("Generated", "生成时间"),
    "summary": Text("Summary", "概览"),
    "control": Text("Control", "控制项"),
    "verdict": Text("Verdict", "结论"),
    "requirement": Text("Requirement", "要求"),
    "evidence": Text("Evidence", "证据"),
    "found": Text("Found", "检查结果"),
    "fix": Text("Fix", "整改建议"),
    "pass": Text("pass", "符合"),
    "fail": Text("fail", "不符合"),
    "not_applicable": Text("not applicable", "不适用"),
    "platform": Text("Platform checked", "被检查平台"),
}
PLATFORM = {
    "home": Text("Home", "主目录"), "database": Text("Database", "数据库"),
    "gateway": Text("Gateway listens on", "网关监听地址"), "version": Text("moecloud version", "moecloud 版本"),
    "gateway_url": Text("Gateway probed at", "探测的网关地址"),
    "gateway_health": Text("Its /health", "其 /health 状态"),
}
_MARK = {True: "✓", False: "✗", None: "·"}
_COLOURS = {"pass": "#1a7f37", "fail": "#cf222e", "not_applicable": "#6e7781"}

_HTML = Environment(autoescape=True).from_string("""<!doctype html>
<html lang="{{ lang }}"><head><meta charset="utf-8"><title>{{ label.title }}</title>
<style>
body { font-family: system-ui, "PingFang SC", "Microsoft YaHei", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; color: #1f2328; }
table { border-collapse: collapse; width: 100%; margin: .5rem 0 1rem; }
th, td { border: 1px solid #d0d7de; padding: .35rem .5rem; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .not_applicable { color: #6e7781; }
.verdict { font-weight: 600; } .fix { background: #fff8c5; padding: .5rem; border-left: 4px solid #d4a72c; }
</style></head><body>
<h1>{{ label.title }}</h1>
<p>{{ label.created }}: {{ created }}</p>
<table>{% for name, value in platform.items() %}<tr><th>{{ name }}</th><td>{{ value }}</td></tr>{% endfor %}</table>
<h2>{{ label.summary }}</h2>
<table><tr><th>{{ label.control }}</th><th>{{ label.verdict }}</th></tr>
{% for control in controls %}<tr><td><a href="#{{ control.id }}">{{ control.name }}</a></td>
<td class="verdict {{ control.verdict }}">{{ control.verdict_label }}</td></tr>
{% endfor %}</table>
{% for control in controls %}<section id="{{ control.id }}">
<h2>{{ control.name }} — <span class="{{ control.verdict }}">{{ control.verdict_label }}</span></h2>
<p><strong>{{ label.requirement }}:</strong> {{ control.requirement }}</p>
<table><tr><th></th><th>{{ label.evidence }}</th><th>{{ label.found }}</th></tr>
{% for item in control.evidence %}<tr><td>{{ item.mark }}</td><td>{{ item.what }}</td><td>{{ item.value }}</td></tr>
{% endfor %}</table>
{% if control.fix %}<p class="fix"><strong>{{ label.fix }}:</strong> {{ control.fix }}</p>{% endif %}
</section>
{% endfor %}</body></html>
""")


def _view(report: Report, lang: Lang) -> dict[str, object]:
    """The report in one language, as plain strings for the templates."""
    return {
        "lang": "zh-CN" if lang == "zh" else "en",
        "label": {name: text(lang) for name, text in LABELS.items()},
        "created": report.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        "platform": _platform(report, lang),
        "controls": [
            {
                "id": control.id, "name": control.name(lang), "requirement": control.requirement(lang),
                "verdict": control.verdict, "verdict_label": LABELS[control.verdict](lang),
                "fix": control.fix(lang) if control.fix else "",
                "evidence": [{"mark": _MARK[item.ok], "what": item.what(lang), "value": words(item.value, lang)}
                             for item in control.evidence],
            }
            for control in report.controls
        ],
    }


def _platform(report: Report, lang: Lang) -> dict[str, str]:
    return {PLATFORM[name](lang) if name in PLATFORM else name: value for name, value in report.platform.items()}


def render_html(report: Report, lang: Lang) -> str:
    return _HTML.render(**_view(report, lang))


def render_pdf(report: Report, lang: Lang) -> bytes:
    font = "Helvetica"
    if lang == "zh":
        pdfmetrics.registerFont(UnicodeCIDFont(CHINESE_FONT))
        font = CHINESE_FONT
    base = getSampleStyleSheet()
    body = ParagraphStyle("body", parent=base["BodyText"], fontName=font, fontSize=9, leading=12,
                          wordWrap="CJK" if lang == "zh" else None)
    heading = ParagraphStyle("heading", parent=base["Heading2"], fontName=font)

    def label(name: str) -> str:
        return LABELS[name](lang)

    def cell(text: str, colour: str | None = None) -> Paragraph:
        return Paragraph(f'<font color="{colour}">{escape(text)}</font>' if colour else escape(text), body)

    grid = TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#d0d7de")),
                       ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#f6f8fa")),
                       ("VALIGN", (0, 0), (-1, -1), "TOP")])
    story: list[Flowable] = [
        Paragraph(escape(label("title")), ParagraphStyle("title", parent=base["Title"], fontName=font)),
        cell(f"{label('created')}: {report.created_at:%Y-%m-%d %H:%M:%S} UTC"),
        Table([[cell(name), cell(value)] for name, value in _platform(report, lang).items()],
              colWidths=[35 * mm, 135 * mm],
              style=TableStyle([("GRID", (0, 0), (-1, -1), 0.5, colors.HexColor("#d0d7de"))])),
        Paragraph(escape(label("summary")), heading),
        Table([[cell(label("control")), cell(label("verdict"))]]
              + [[cell(control.name(lang)), cell(label(control.verdict), _COLOURS[control.verdict])]
                 for control in report.controls], colWidths=[120 * mm, 50 * mm], style=grid),
    ]
    for control in report.controls:
        story += [Paragraph(escape(f"{control.name(lang)} — {label(control.verdict)}"), heading),
                  cell(f"{label('requirement')}: {control.requirement(lang)}"), Spacer(1, 2 * mm),
                  Table([[cell(""), cell(label("evidence")), cell(label("found"))]]
                        + [[cell(_MARK[item.ok]), cell(item.what(lang)), cell(words(item.value, lang))]
                           for item in control.evidence],
                        colWidths=[8 * mm, 62 * mm, 100 * mm], style=grid, repeatRows=1)]
        if control.fix:
            story.append(cell(f"{label('fix')}: {control.fix(lang)}"))
    out = BytesIO()
    SimpleDocTemplate(out, pagesize=A4, title=label("title"), leftMargin=20 * mm, rightMargin=20 * mm).build(story)
    return out.getvalue()


def write_report(report: Report, out_dir: Path, langs: Iterable[Lang] = LANGS) -> list[Path]:
    """compliance-<stamp>.<lang>.html and .pdf for each language, and report.json (the newest report's data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report.created_at.strftime("%Y%m%dT%H%M%SZ")
    written = []
    for lang in langs:
        html, pdf = out_dir / f"compliance-{stamp}.{lang}.html", out_dir / f"compliance-{stamp}.{lang}.pdf"
        html.write_text(render_html(report, lang), encoding="utf-8")
        pdf.write_bytes(render_pdf(report, lang))
        written += [html, pdf]
    data = out_dir / "report.json"
    data.write_text(json.dumps(report.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
    return [*written, data]
