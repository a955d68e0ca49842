"""The backup history of an app as a server-rendered SVG: stored size and added bytes per
backup over time, failures marked. No script, no external font: it renders the same in
every browser and prints."""

from __future__ import annotations

from datetime import datetime
from html import escape

from sidecar.web.pages import human_size, parse_time

WIDTH, HEIGHT = 720, 240
LEFT, RIGHT, TOP, BOTTOM = 70, 16, 16, 40


def history_svg(backups: list[dict]) -> str:
    """`backups`: the API's backup records, any order. Completed ones are points on two lines
    (stored size: filled circles; added: squares), failed ones a cross on the time axis."""
    rows = [(parse_time(b.get("created_at")), b) for b in backups]
    rows = sorted((t, b) for t, b in rows if t is not None)  # type: ignore[misc]
    title = "Backup history: stored size and bytes added per backup; crosses mark failed backups"
    if not rows:
        return (
            f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} 60" class="chart">'
            '<text x="10" y="35">No backups yet.</text></svg>'
        )
    times = [t.timestamp() for t, _ in rows]
    t0, t1 = min(times), max(times)
    span = (t1 - t0) or 1.0
    done = [(t, b) for t, b in rows if b.get("status") == "completed"]
    top = max([b.get("size_bytes") or 0 for _, b in done] + [b.get("added_bytes") or 0 for _, b in done] + [1])
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(t: datetime) -> float:
        return LEFT + (t.timestamp() - t0) / span * plot_w if t1 > t0 else LEFT + plot_w / 2

    def y(v: int) -> float:
        return TOP + plot_h - (v / top) * plot_h

    out = [f'<svg role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" class="chart">']
    out.append(f"<title>{escape(title)}</title>")
    for frac in (0.0, 0.5, 1.0):  # grid and labels
        gy = TOP + plot_h - frac * plot_h
        out.append(f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{WIDTH - RIGHT}" y2="{gy:.1f}" class="grid"/>')
        out.append(f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end">{escape(human_size(top * frac))}</text>')
    first, last = rows[0][0], rows[-1][0]
    out.append(f'<text x="{LEFT}" y="{HEIGHT - 12}">{first:%Y-%m-%d %H:%M}</text>')
    if last != first:
        out.append(f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 12}" text-anchor="end">{last:%Y-%m-%d %H:%M}</text>')
    for key, cls in (("size_bytes", "stored"), ("added_bytes", "added")):
        points = " ".join(f"{x(t):.1f},{y(b.get(key) or 0):.1f}" for t, b in done)
        if len(done) > 1:
            out.append(f'<polyline points="{points}" class="line {cls}"/>')
        for t, b in done:
            label = f"{b['backup_id']}: {cls} {human_size(b.get(key) or 0)}"
            px, py = x(t), y(b.get(key) or 0)
            if cls == "stored":
                out.append(
                    f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" class="{cls}"><title>{escape(label)}</title></circle>'
                )
            else:
                out.append(
                    f'<rect x="{px - 3.5:.1f}" y="{py - 3.5:.1f}" width="7" height="7" class="{cls}">'
                    f"<title>{escape(label)}</title></rect>"
                )
    for t, b in rows:
        if b.get("status") == "failed":
            px, py = x(t), TOP + plot_h
            label = f"{b['backup_id']}: failed: {b.get('error_message') or ''}"
            out.append(
                f'<g class="failed"><title>{escape(label)}</title>'
                f'<line x1="{px - 6:.1f}" y1="{py - 6:.1f}" x2="{px + 6:.1f}" y2="{py + 6:.1f}"/>'
                f'<line x1="{px - 6:.1f}" y1="{py + 6:.1f}" x2="{px + 6:.1f}" y2="{py - 6:.1f}"/></g>'
            )
    out.append("</svg>")
    return "".join(out)
