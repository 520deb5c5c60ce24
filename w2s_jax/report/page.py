"""The report as one self-contained HTML page and as markdown.

The HTML embeds every PNG as base64 and carries its own small stylesheet,
so the single file opens from disk, offline, anywhere it is copied. The
markdown links the PNGs by relative path, for a README or a PR next to
them.
"""
from __future__ import annotations

import base64
import html

from w2s_jax.report.aggregate import markdown as table_markdown

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f0f0f0}
figure{margin:1.5em 0}
img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.9em}
"""


def summary_lines(data: dict, skipped_lines: int, store_path: str) -> list:
    excluded = sum(p["pgr"] is None for p in data["pairs"])
    return [f"Store: {store_path} ({data['runs']} runs"
            + (f"; {skipped_lines} unreadable line(s) skipped)"
                if skipped_lines else ")"),
            f"{len(data['pairs'])} weak-strong pair × loss entries from w2s "
            f"runs; {excluded} excluded from PGR medians (ceiling does not "
            f"beat weak, or an accuracy is missing).",
            f"{len(data['bootstrap'])} bootstrapping chain(s)."]


def to_markdown(summary: list, tables: list, figures: list,
                notes: list) -> str:
    parts = ["# Weak-to-strong report", ""]
    parts += [f"- {line}" for line in summary] + [""]
    parts += [table_markdown(t) for t in tables]
    parts += ["## Figures", ""]
    for fig in figures:
        parts += [f"### {fig['title']}", "",
                  f"![{fig['title']}]({fig['file']})", "", fig["caption"], ""]
    if notes:
        parts += ["Not plotted:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(parts)


def _html_table(table: dict) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in table["headers"])
    body = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row)
                   + "</tr>" for row in table["rows"])
    note = (f'<p class="note">{esc(table["note"])}</p>'
            if table.get("note") else "")
    return (f"<h3>{esc(table['title'])}</h3>{note}"
            f"<table><tr>{head}</tr>{body}</table>")


def to_html(summary: list, tables: list, figures: list, notes: list) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html><html><head><meta charset=\"utf-8\">",
             "<title>Weak-to-strong report</title>",
             f"<style>{_STYLE}</style></head><body>",
             "<h1>Weak-to-strong report</h1><ul>",
             *(f"<li>{esc(line)}</li>" for line in summary), "</ul>",
             "<h2>Tables</h2>", *(_html_table(t) for t in tables),
             "<h2>Figures</h2>"]
    for fig in figures:
        data = base64.b64encode(fig["png"]).decode("ascii")
        parts.append(f"<figure><h3>{esc(fig['title'])}</h3>"
                     f'<img alt="{esc(fig["title"])}" '
                     f'src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(fig['caption'])}</figcaption>"
                     "</figure>")
    if notes:
        parts += ["<p>Not plotted:</p><ul>",
                  *(f"<li>{esc(n)}</li>" for n in notes), "</ul>"]
    parts.append("</body></html>\n")
    return "\n".join(parts)
