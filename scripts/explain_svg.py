#!/usr/bin/env python3
"""Draw `zoo run fake-news --explain --json` output as an SVG picture for the README.

Each word gets a red background whose strength follows its score (as the terminal rendering
does); words that argue against the label stay plain. Reads JSON lines on stdin, writes one SVG
with a block per text on stdout.

    zoo run fake-news --text "..." --explain --json | scripts/explain_svg.py > docs/explain-text.svg
"""
import html
import json
import sys

CHAR_W = 8.4  # monospace advance at 14 px
LINE_H = 22
WRAP = 78  # characters per line
RAMP = ["#ffd7d7", "#ffafaf", "#ff8787", "#ff5f5f", "#ff0000"]  # xterm 224, 217, 210, 203, 196


def blocks(lines):
    for line in lines:
        line = line.strip()
        if line:
            yield json.loads(line)


def layout(words):
    """Yields (row, column, word, score): the words one space apart, wrapped at WRAP characters."""
    row, col = 0, 0
    for w in words:
        token = w["text"]
        if col and col + 1 + len(token) > WRAP:
            row, col = row + 1, 0
        elif col:
            col += 1
        yield row, col, token, w["score"]
        col += len(token)


def main():
    parts, y = [], 0
    for obj in blocks(sys.stdin):
        e = obj["explanation"]
        words = e["words"]
        top = max((w["score"] for w in words), default=0) or 1
        header = f'{obj["label"]} ({obj["scores"][obj["label"]] * 100:.1f}%): why, word by word'
        y += LINE_H
        parts.append(f'<text x="8" y="{y}" font-weight="bold">{html.escape(header)}</text>')
        y += 6
        rows = 0
        for row, col, token, score in layout(words):
            rows = max(rows, row)
            x, top_y = 8 + col * CHAR_W, y + row * LINE_H
            if score > 0:
                step = min(len(RAMP), max(1, -(-score * len(RAMP) // top))) - 1
                parts.append(
                    f'<rect x="{x - 1:.1f}" y="{top_y + 3}" width="{len(token) * CHAR_W + 2:.1f}" '
                    f'height="{LINE_H - 2}" fill="{RAMP[int(step)]}"/>'
                )
            parts.append(f'<text x="{x:.1f}" y="{top_y + LINE_H - 4}">{html.escape(token)}</text>')
        y += (rows + 1) * LINE_H + 10
    width = int(16 + WRAP * CHAR_W)
    print(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{y + 8}" '
        f'font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="14">'
    )
    print(f'<rect width="{width}" height="{y + 8}" fill="white"/>')
    print("\n".join(parts))
    print("</svg>")


if __name__ == "__main__":
    main()
