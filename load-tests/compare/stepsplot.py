"""SVG charts of the stepped-chat runs for docs/benchmarks.md: per server, p99 latency and
delivered/s against the offered target, on log scales, one panel per scenario.

Plain SVG written by hand (no plotting library to install on the machine that runs the
comparison); imported by report.py.
"""
import math

COLORS = {"switchboard": "#1f77b4", "prosody": "#d62728", "ejabberd": "#2ca02c"}
PANEL_W, PANEL_H = 420, 300
LEFT, RIGHT, TOP, BOTTOM = 62, 14, 34, 46


def _log_pos(v, lo, hi, length):
    v = min(max(v, lo), hi)
    return (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * length


def _decades(lo, hi):
    d = 10 ** math.floor(math.log10(lo))
    while d <= hi:
        if d >= lo:
            yield d
        d *= 10


def _label(v):
    if v >= 1000000:
        return f"{v / 1000000:g}M"
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def _panel(x0, title, series, x_range, y_range, y_name, y_of, guide):
    """One chart at horizontal offset x0. series: {server: [step dicts]}."""
    w, h = PANEL_W - LEFT - RIGHT, PANEL_H - TOP - BOTTOM
    out = [f'<g transform="translate({x0},0)">',
           f'<text x="{PANEL_W / 2}" y="18" text-anchor="middle" font-size="13" font-weight="bold">{title}</text>',
           f'<rect x="{LEFT}" y="{TOP}" width="{w}" height="{h}" fill="none" stroke="#888"/>']
    for d in _decades(*x_range):
        x = LEFT + _log_pos(d, *x_range, w)
        out.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + h}" stroke="#eee"/>')
        out.append(f'<text x="{x:.1f}" y="{TOP + h + 15}" text-anchor="middle" font-size="11">{_label(d)}</text>')
    for d in _decades(*y_range):
        y = TOP + h - _log_pos(d, *y_range, h)
        out.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + w}" y2="{y:.1f}" stroke="#eee"/>')
        out.append(f'<text x="{LEFT - 5}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{_label(d)}</text>')
    out.append(f'<text x="{LEFT + w / 2}" y="{PANEL_H - 8}" text-anchor="middle" font-size="11">offered target, msgs/s</text>')
    out.append(f'<text transform="translate(14,{TOP + h / 2}) rotate(-90)" text-anchor="middle" font-size="11">{y_name}</text>')
    out.extend(guide(w, h))
    for s, steps in series.items():
        color = COLORS.get(s, "#555")
        pts = [(LEFT + _log_pos(p["target_rate"], *x_range, w), TOP + h - _log_pos(y_of(p), *y_range, h), p)
               for p in steps]
        if not pts:
            continue
        out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                   + " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in pts) + '"/>')
        for x, y, p in pts:
            fill = color if p["sustained"] else "white"
            out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{fill}" stroke="{color}" stroke-width="1.5"/>')
    out.append("</g>")
    return out


def chart(panels, y_name, y_of, y_range, guide_kind):
    """panels: [(title, {server: steps})]. guide_kind: 'limit' (100 ms line) or 'diagonal'."""
    all_rates = [p["target_rate"] for _, series in panels for steps in series.values() for p in steps]
    if not all_rates:
        return None
    x_range = (10 ** math.floor(math.log10(min(all_rates))), 10 ** math.ceil(math.log10(max(all_rates))))

    def guide(w, h):
        if guide_kind == "limit":
            y = TOP + h - _log_pos(100, *y_range, h)
            return [f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + w}" y2="{y:.1f}" stroke="#000" stroke-dasharray="5,4"/>',
                    f'<text x="{LEFT + w - 4}" y="{y - 4:.1f}" text-anchor="end" font-size="10">p99 limit 100 ms</text>']
        lo, hi = max(x_range[0], y_range[0]), min(x_range[1], y_range[1])
        x1, x2 = LEFT + _log_pos(lo, *x_range, w), LEFT + _log_pos(hi, *x_range, w)
        y1, y2 = TOP + h - _log_pos(lo, *y_range, h), TOP + h - _log_pos(hi, *y_range, h)
        return [f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="#000" stroke-dasharray="5,4"/>']

    width = PANEL_W * len(panels)
    height = PANEL_H + 26
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif">',
           f'<rect width="{width}" height="{height}" fill="white"/>']
    for i, (title, series) in enumerate(panels):
        out.extend(_panel(i * PANEL_W, title, series, x_range, y_range, y_name, y_of, guide))
    servers = sorted({s for _, series in panels for s in series}, key=list(COLORS).index)
    x = 70
    for s in servers:
        c = COLORS.get(s, "#555")
        out.append(f'<line x1="{x}" y1="{PANEL_H + 12}" x2="{x + 22}" y2="{PANEL_H + 12}" stroke="{c}" stroke-width="2"/>')
        out.append(f'<text x="{x + 27}" y="{PANEL_H + 16}" font-size="12">{s}</text>')
        x += 120
    out.append(f'<text x="{x + 10}" y="{PANEL_H + 16}" font-size="11">filled: step sustained; hollow: not</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def latency_chart(panels):
    return chart(panels, "p99 latency, ms", lambda p: p["latency_ms"]["p99"], (0.1, 10000), "limit")


def delivered_chart(panels):
    return chart(panels, "delivered, msgs/s", lambda p: p["delivered_per_sec"], (100, 1000000), "diagonal")
