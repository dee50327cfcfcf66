"""``pbq report``: one self-contained HTML file about a jobfile's run.

Reads, per host, ``JOBFILE.HOST.history`` (and the rotated ``.history.1``), ``.joblog``,
``.error`` and ``.status``.  Writes inline SVG and CSS only: no JavaScript, no fonts or
images from elsewhere, so the file opens anywhere, offline, and can be mailed around.

Per host: a timeline of load, foreign load and limit, and one of running/stopped job
counts (gaps where the scheduler was not running).  For all hosts: a histogram of job run
times (log-spaced bins, failed jobs stacked in red) and the table of failed jobs.
"""

from __future__ import annotations

import html
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .ops import format_duration, host_row, queue_status, status_hosts
from .sidefiles import JoblogRow, read_joblog
from .statefiles import HostFiles, hosts_with, read_json_lines

MAX_POINTS = 1200  # samples per series drawn; longer histories are bucketed (max per bucket)

# Palette (colour-blind friendly enough, and distinct in grey-scale print by dash/fill).
C_LOAD = "#2563eb"
C_FOREIGN = "#f59e0b"
C_LIMIT = "#dc2626"
C_RUNNING = "#16a34a"
C_STOPPED = "#9333ea"
C_OK = "#3b82f6"
C_FAILED = "#ef4444"
C_GRID = "#e5e7eb"
C_AXIS = "#9ca3af"
C_TEXT = "#4b5563"


# ------------------------------------------------------------------ data


@dataclass
class HostData:
    name: str
    row: dict
    history: list[dict]
    jobs: list[JoblogRow]
    error_lines: int


@dataclass
class ReportData:
    jobfile: Path
    generated: float
    status: dict
    hosts: list[HostData]
    jobs: list[JoblogRow] = field(default_factory=list)

    @property
    def span(self) -> tuple[float, float] | None:
        ts = [float(s["t"]) for h in self.hosts for s in h.history]
        ts += [j.start for j in self.jobs] + [j.end for j in self.jobs]
        if not ts:
            return None
        return min(ts), max(ts)


def read_history(jobfile: Path, host: str) -> list[dict]:
    """The host's samples, oldest first, from ``.history.1`` and ``.history``."""
    path = HostFiles(jobfile, host).history
    samples = read_json_lines(path.with_name(path.name + ".1")) + read_json_lines(path)
    out = []
    for s in samples:
        if isinstance(s, dict) and isinstance(s.get("t"), (int, float)):
            out.append(s)
    out.sort(key=lambda s: s["t"])
    return out


def _count_lines(path: Path) -> int:
    try:
        data = path.read_bytes()
    except OSError:
        return 0
    return sum(1 for ln in data.split(b"\n") if ln.strip())


def collect(jobfile: Path, hostfile: Path | None, now: float | None = None) -> ReportData:
    now = time.time() if now is None else now
    st = queue_status(jobfile, hostfile, use_lock=False, now=now)
    rows = {r["host"]: r for r in st["hosts"]}
    names = status_hosts(jobfile, hostfile)
    names += sorted(set(hosts_with(jobfile, "history")) - set(names))
    hosts = []
    jobs: list[JoblogRow] = []
    for name in names:
        files = HostFiles(jobfile, name)
        hjobs = read_joblog(files.joblog)
        jobs += hjobs
        hosts.append(
            HostData(
                name=name,
                row=rows.get(name) or host_row(jobfile, name, now),
                history=read_history(jobfile, name),
                jobs=hjobs,
                error_lines=_count_lines(files.error),
            )
        )
    jobs.sort(key=lambda j: (j.start, j.host, j.seq))
    return ReportData(jobfile, now, st, hosts, jobs)


# ------------------------------------------------------------------ axes


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


_TIME_STEPS = (
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
    172800,
    604800,
    1209600,
    2592000,
)


def time_ticks(t0: float, t1: float, max_ticks: int = 8) -> list[tuple[float, str]]:
    """Ticks at round local clock times between t0 and t1, with their labels."""
    span = max(t1 - t0, 1e-9)
    step = next((s for s in _TIME_STEPS if span / s <= max_ticks), _TIME_STEPS[-1])
    off = time.localtime(t0).tm_gmtoff
    t = math.ceil((t0 + off) / step) * step - off
    ticks = []
    while t <= t1 + 1e-6:
        ticks.append(t)
        t += step
    multi_day = time.localtime(t0)[:3] != time.localtime(t1)[:3]
    out: list[tuple[float, str]] = []
    last_day = None
    for t in ticks:
        lt = time.localtime(t)
        if step >= 86400:
            label = time.strftime("%d %b", lt)
        else:
            label = time.strftime("%H:%M:%S" if step < 60 else "%H:%M", lt)
            if multi_day and lt[:3] != last_day:
                label = time.strftime("%d %b ", lt) + label
            last_day = lt[:3]
        out.append((t, label))
    return out


def value_ticks(vmax: float, integer: bool = False, n: int = 4) -> list[float]:
    """0 and round steps up to at least ``vmax``."""
    vmax = max(vmax, 1.0 if integer else 0.1)
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = mag
    for m in (1, 2, 2.5, 5, 10):
        step = m * mag
        if step >= raw - 1e-12:
            break
    if integer:
        step = max(1.0, math.ceil(step))
    top = math.ceil(vmax / step - 1e-9) * step
    return [round(i * step, 10) for i in range(int(round(top / step)) + 1)]


def _fmt_value(v: float) -> str:
    if abs(v - round(v)) < 1e-9:
        return str(int(round(v)))
    return f"{v:.2f}".rstrip("0").rstrip(".")


def short_duration(seconds: float) -> str:
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:.0f}ms" if ms >= 1 else f"{ms:g}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    if seconds < 3600:
        return f"{seconds / 60:g}m"
    if seconds < 86400:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 86400:g}d"


# ------------------------------------------------------------------ charts


@dataclass
class Series:
    name: str
    color: str
    points: list[tuple[float, float | None]]
    step: bool = False  # hold each value until the next sample
    dash: str = ""
    fill: bool = False
    width: float = 1.8


@dataclass
class Frame:
    t0: float
    t1: float
    vmax: float
    width: int = 960
    height: int = 190
    left: int = 44
    right: int = 14
    top: int = 10
    bottom: int = 24

    def x(self, t: float) -> float:
        span = max(self.t1 - self.t0, 1e-9)
        return self.left + (t - self.t0) / span * (self.width - self.left - self.right)

    def y(self, v: float) -> float:
        return self.top + (1 - v / max(self.vmax, 1e-9)) * (self.height - self.top - self.bottom)

    @property
    def y0(self) -> float:
        return self.height - self.bottom


def _decimate(
    points: list[tuple[float, float | None]], t0: float, t1: float, n: int = MAX_POINTS
) -> list[tuple[float, float | None]]:
    """At most ``n`` points: the maximum in each of ``n`` equal time buckets."""
    if len(points) <= n:
        return points
    width = max(t1 - t0, 1e-9) / n
    buckets: dict[int, tuple[float, float | None]] = {}
    for t, v in points:
        k = min(n - 1, int((t - t0) / width))
        old = buckets.get(k)
        if old is None or (v is not None and (old[1] is None or v > old[1])):
            buckets[k] = (old[0] if old else t, v)
    return [buckets[k] for k in sorted(buckets)]


def segments(
    points: list[tuple[float, float | None]], gap: float
) -> list[list[tuple[float, float]]]:
    """Split where a value is missing or samples are more than ``gap`` seconds apart."""
    out: list[list[tuple[float, float]]] = []
    cur: list[tuple[float, float]] = []
    last_t: float | None = None
    for t, v in points:
        if v is None or (last_t is not None and t - last_t > gap):
            if cur:
                out.append(cur)
            cur = []
        if v is not None:
            cur.append((t, v))
        last_t = t
    if cur:
        out.append(cur)
    return out


def _path(seg: list[tuple[float, float]], f: Frame, step: bool, close: bool) -> str:
    parts = []
    for i, (t, v) in enumerate(seg):
        x, y = f.x(t), f.y(v)
        if i == 0:
            parts.append(f"M{x:.1f},{y:.1f}")
        elif step:
            parts.append(f"H{x:.1f}V{y:.1f}")
        else:
            parts.append(f"L{x:.1f},{y:.1f}")
    if close:
        parts.append(f"V{f.y0:.1f}H{f.x(seg[0][0]):.1f}Z")
    return "".join(parts)


def _axes(f: Frame, ticks: list[tuple[float, str]], yticks: list[float], y_label: str) -> list[str]:
    out = [f'<g class="grid" stroke="{C_GRID}" stroke-width="1">']
    for v in yticks:
        out.append(
            f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{f.y(v):.1f}" y2="{f.y(v):.1f}"/>'
        )
    for t, _ in ticks:
        out.append(
            f'<line x1="{f.x(t):.1f}" x2="{f.x(t):.1f}" y1="{f.top}" y2="{f.y0}" '
            'stroke-dasharray="2,3"/>'
        )
    out.append("</g>")
    out.append(f'<g class="yaxis" fill="{C_TEXT}" font-size="11" text-anchor="end">')
    for v in yticks:
        out.append(f'<text x="{f.left - 6}" y="{f.y(v) + 4:.1f}">{_e(_fmt_value(v))}</text>')
    out.append("</g>")
    out.append(f'<g class="xaxis" fill="{C_TEXT}" font-size="11" text-anchor="middle">')
    for t, label in ticks:
        out.append(f'<text x="{f.x(t):.1f}" y="{f.height - 6}">{_e(label)}</text>')
    out.append("</g>")
    out.append(
        f'<line x1="{f.left}" x2="{f.width - f.right}" y1="{f.y0}" y2="{f.y0}" stroke="{C_AXIS}"/>'
    )
    out.append(
        f'<text class="ylabel" x="12" y="{(f.top + f.y0) / 2:.0f}" fill="{C_TEXT}" font-size="11" '
        f'text-anchor="middle" transform="rotate(-90 12 {(f.top + f.y0) / 2:.0f})">'
        f"{_e(y_label)}</text>"
    )
    return out


def line_chart(
    series: Sequence[Series],
    t0: float,
    t1: float,
    *,
    kind: str,
    host: str,
    y_label: str,
    gap: float,
    integer: bool = False,
    height: int = 190,
) -> str:
    """An inline SVG time chart; ``kind`` becomes its CSS class (``chart KIND``)."""
    vmax = max((v for s in series for _, v in s.points if v is not None), default=0.0)
    yt = value_ticks(vmax, integer=integer)
    f = Frame(t0, t1, yt[-1], height=height)
    desc = (
        f"{y_label} on {host}, {time.strftime('%H:%M', time.localtime(t0))} "
        f"to {time.strftime('%H:%M', time.localtime(t1))}"
    )
    out = [
        f'<svg class="chart {_e(kind)}" data-host="{_e(host)}" viewBox="0 0 {f.width} {f.height}" '
        f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{_e(desc)}" '
        f'font-family="system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif">',
        f"<title>{_e(desc)}</title>",
    ]
    out += _axes(f, time_ticks(t0, t1), yt, y_label)
    for s in series:
        pts = _decimate(s.points, t0, t1)
        segs = segments(pts, gap)
        if not segs:
            continue
        out.append(f'<g class="series" data-name="{_e(s.name)}"><title>{_e(s.name)}</title>')
        for seg in segs:
            if s.step and seg:
                seg = [
                    *seg,
                    (min(t1, seg[-1][0] + gap / 3), seg[-1][1]),
                ]  # show the last value's width
            if s.fill:
                out.append(
                    f'<path d="{_path(seg, f, s.step, True)}" fill="{s.color}" '
                    'fill-opacity="0.18" stroke="none"/>'
                )
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            if len(seg) == 1:
                x, y = f.x(seg[0][0]), f.y(seg[0][1])
                out.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{s.color}"/>')
            else:
                out.append(
                    f'<path d="{_path(seg, f, s.step, False)}" fill="none" stroke="{s.color}" '
                    f'stroke-width="{s.width}" stroke-linejoin="round"{dash}/>'
                )
        out.append("</g>")
    out.append("</svg>")
    return "\n".join(out)


def legend(items: Sequence[tuple[str, str, str]]) -> str:
    """``<div class="legend">`` with (name, colour, style) items; style: line, dash or fill."""
    parts = ['<div class="legend">']
    for name, color, style in items:
        if style == "dash":
            sw = f'<span class="sw dash" style="border-top-color:{color}"></span>'
        elif style == "fill":
            sw = f'<span class="sw fill" style="background:{color}"></span>'
        else:
            sw = f'<span class="sw" style="background:{color}"></span>'
        parts.append(f"<span>{sw}{_e(name)}</span>")
    parts.append("</div>")
    return "".join(parts)


# ------------------------------------------------------------------ histogram

# Log-spaced edges that are round durations: 1-2-5 below a minute, then minutes and hours.
_EDGE_SERIES = [
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    20,
    30,
    60,
    120,
    300,
    600,
    1200,
    1800,
    3600,
    7200,
    4 * 3600,
    10 * 3600,
    86400,
    2 * 86400,
    5 * 86400,
    10 * 86400,
    30 * 86400,
    100 * 86400,
]


def histogram_edges(runtimes: Sequence[float]) -> list[float]:
    """Log-spaced bin edges (1-2-5 series) covering every run time."""
    lo = max(min(runtimes), 0.001)
    hi = max(max(runtimes), lo)
    first = max((e for e in _EDGE_SERIES if e <= lo), default=_EDGE_SERIES[0])
    last = next((e for e in _EDGE_SERIES if e > hi), _EDGE_SERIES[-1])
    edges = [e for e in _EDGE_SERIES if first <= e <= last]
    if len(edges) < 2:
        edges = [first, first * 2]
    return edges


def histogram(jobs: Sequence[JoblogRow]) -> str:
    if not jobs:
        return '<p class="empty">No job has finished yet.</p>'
    runtimes = [j.runtime for j in jobs]
    edges = histogram_edges(runtimes)
    nb = len(edges) - 1
    ok = [0] * nb
    bad = [0] * nb
    for j in jobs:
        i = 0
        while i < nb - 1 and j.runtime >= edges[i + 1]:
            i += 1
        (bad if j.failed else ok)[i] += 1
    yt = value_ticks(max(o + b for o, b in zip(ok, bad, strict=True)), integer=True)
    f = Frame(0, nb, yt[-1], height=220, bottom=30, right=24)
    desc = f"histogram of the run times of {len(jobs)} jobs"
    out = [
        f'<svg class="chart histogram" viewBox="0 0 {f.width} {f.height}" '
        'xmlns="http://www.w3.org/2000/svg" '
        f'role="img" aria-label="{_e(desc)}" '
        'font-family="system-ui,-apple-system,Segoe UI,Roboto,Helvetica,Arial,sans-serif">',
        f"<title>{_e(desc)}</title>",
    ]
    out += _axes(f, [], yt, "jobs")
    bw = f.x(1) - f.x(0)
    for i in range(nb):
        x = f.x(i) + bw * 0.08
        w = bw * 0.84
        tip = (
            f"{short_duration(edges[i])} to {short_duration(edges[i + 1])}: "
            f"{ok[i] + bad[i]} job(s), {bad[i]} failed"
        )
        out.append(
            f'<g class="bin" data-lo="{edges[i]:g}" data-hi="{edges[i + 1]:g}" '
            f'data-ok="{ok[i]}" data-failed="{bad[i]}"><title>{_e(tip)}</title>'
        )
        y_ok = f.y(ok[i])
        if ok[i]:
            out.append(
                f'<rect x="{x:.1f}" y="{y_ok:.1f}" width="{w:.1f}" height="{f.y0 - y_ok:.1f}" '
                f'fill="{C_OK}" rx="2"/>'
            )
        if bad[i]:
            y_bad = f.y(ok[i] + bad[i])
            out.append(
                f'<rect x="{x:.1f}" y="{y_bad:.1f}" width="{w:.1f}" height="{y_ok - y_bad:.1f}" '
                f'fill="{C_FAILED}" rx="2"/>'
            )
        if ok[i] + bad[i]:
            out.append(
                f'<text x="{x + w / 2:.1f}" y="{f.y(ok[i] + bad[i]) - 4:.1f}" '
                f'font-size="10" fill="{C_TEXT}" '
                f'text-anchor="middle">{ok[i] + bad[i]}</text>'
            )
        out.append("</g>")
    out.append(f'<g fill="{C_TEXT}" font-size="11" text-anchor="middle">')
    for i, e in enumerate(edges):
        out.append(f'<text x="{f.x(i):.1f}" y="{f.height - 10}">{_e(short_duration(e))}</text>')
    out.append("</g></svg>")
    return "\n".join(out)


# ------------------------------------------------------------------ page

# A backslash at the end of a line continues the rule on the next one: the text has no newline
# there, so the style sheet stays as it was.
CSS = """
:root { --fg: #111827; --muted: #6b7280; --line: #e5e7eb; --bg: #f3f4f6; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--fg);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1080px; margin: 0 auto; padding: 24px 20px 40px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h2 { font-size: 16px; margin: 0 0 12px; }
h3 { font-size: 14px; margin: 18px 0 6px; display: flex; gap: 10px; align-items: baseline; }
.sub { color: var(--muted); margin: 0 0 16px; word-break: break-all; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(118px, 1fr)); gap: 10px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .k { color: var(--muted); font-size: 11px; text-transform: uppercase; letter-spacing: .05em; }
.card .v { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card.failed .v { color: #b91c1c; }
.bar { height: 8px; background: var(--line); border-radius: 4px; overflow: hidden; \
display: flex; margin: 12px 0 0; }
.bar span { display: block; height: 100%; }
.panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; \
padding: 16px 18px; margin-top: 16px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); \
vertical-align: top; }
th { font-size: 11px; text-transform: uppercase; letter-spacing: .05em; color: var(--muted); \
font-weight: 600; }
th.n { text-align: right; }
td.nw { white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; \
white-space: pre-wrap; word-break: break-all; }
.chart { width: 100%; height: auto; display: block; }
.charthead { display: flex; justify-content: space-between; align-items: baseline; \
margin-top: 6px; }
.charthead .t { font-size: 12px; color: var(--muted); }
.legend { font-size: 12px; color: var(--muted); display: flex; gap: 14px; flex-wrap: wrap; }
.legend .sw { display: inline-block; width: 16px; height: 3px; vertical-align: middle; \
margin-right: 5px; border-radius: 2px; }
.legend .sw.dash { height: 0; border-top: 2px dashed; background: none; }
.legend .sw.fill { height: 10px; opacity: .5; }
.state { font-size: 12px; font-weight: 500; padding: 1px 8px; border-radius: 10px; \
background: var(--line); color: var(--fg); }
.state.alive { background: #dcfce7; color: #166534; }
.state.stopped, .state.quitting, .state.stale { background: #fef3c7; color: #92400e; }
.state.dead, .state.terminated, .state.quarantined { background: #fee2e2; color: #991b1b; }
.hostinfo { color: var(--muted); font-size: 12px; font-weight: 400; }
.empty { color: var(--muted); }
.host + .host { border-top: 1px solid var(--line); margin-top: 14px; }
footer { color: var(--muted); font-size: 12px; margin-top: 18px; text-align: center; }
@media print { body { background: #fff; } .panel, .card { border-color: #ccc; } }
"""


def _card(key: str, value: str, cls: str = "") -> str:
    return (
        f'<div class="card {cls}"><div class="k">{_e(key)}</div>'
        f'<div class="v">{_e(value)}</div></div>'
    )


def _when(t: float, with_date: bool = True) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S", time.localtime(t))


def _summary(data: ReportData) -> str:
    st = data.status
    cards = [
        _card("pending", str(st["pending"])),
        _card("running", str(st["running"])),
        _card("stopped", str(st["stopped"])),
        _card("done", str(st["done"])),
        _card("failed", str(st["failed"]), "failed" if st["failed"] else ""),
    ]
    if data.jobs:
        first = min(j.start for j in data.jobs)
        last = max(j.end for j in data.jobs)
        avg = len(data.jobs) / max(last - first, 1.0) * 60
        cards.append(_card("avg jobs/min", f"{avg:.3g}"))
    cards.append(_card("jobs/min now", f"{st['jobs_per_min']:.3g}"))
    if st["remaining"] == 0:
        eta = "done"
    elif st["eta_seconds"] is None:
        eta = "unknown"
    else:
        eta = format_duration(st["eta_seconds"])
    cards.append(_card("ETA", eta))
    total = st["total"] or 0
    bar = ""
    if total:
        parts = [
            ("done", st["done"], C_RUNNING),
            ("failed", st["failed"], C_FAILED),
            ("running", st["running"], C_OK),
            ("stopped", st["stopped"], C_STOPPED),
        ]
        spans = "".join(
            f'<span title="{_e(name)}: {n}" '
            f'style="width:{100 * n / total:.2f}%;background:{color}"></span>'
            for name, n, color in parts
            if n
        )
        bar = (
            f'<div class="bar" title="{st["done"] + st["failed"]} of {total} finished">'
            f"{spans}</div>"
        )
    return f'<div class="cards">{"".join(cards)}</div>{bar}'


def _hosts_table(data: ReportData) -> str:
    head = [
        "Host",
        "State",
        "Load",
        "Foreign",
        "Limit",
        "Running",
        "Stopped",
        "Done",
        "Failed",
        "Timed out",
        "Suspend ended",
        "Heartbeat",
    ]
    rows = [
        '<table class="hosts"><thead><tr>'
        + "".join(f'<th class="{"n" if i >= 2 else ""}">{h}</th>' for i, h in enumerate(head))
        + "</tr></thead><tbody>"
    ]
    linked = {h.name for h in data.hosts if h.history or h.jobs}
    for h in data.hosts:
        r = h.row

        def n(key: str, row: dict = r) -> str:
            v = row.get(key)
            if v is None:
                return "-"
            return f"{v:.2f}" if isinstance(v, float) else str(v)

        age = r.get("heartbeat_age")
        state = r.get("state") or "-"
        rows.append(
            f"<tr><td>{_host_link(h.name, h.name in linked)}</td>"
            f'<td><span class="state {_e(state.replace(" ", "-"))}">{_e(state)}</span></td>'
            + "".join(
                f'<td class="n">{_e(n(k))}</td>'
                for k in (
                    "load",
                    "foreign",
                    "limit",
                    "running",
                    "stopped",
                    "done",
                    "failed",
                    "timed_out",
                    "suspend_ended",
                )
            )
            + f'<td class="n">{_e("-" if age is None else format_duration(age) + " ago")}</td></tr>'
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _host_link(name: str, linked: bool) -> str:
    return f'<a href="#host-{_e(name)}">{_e(name)}</a>' if linked else _e(name)


def _gap(samples: list[dict]) -> float:
    """Seconds between two samples beyond which the line is broken (scheduler down)."""
    ts = [float(s["t"]) for s in samples]
    diffs = [b - a for a, b in zip(ts, ts[1:], strict=False) if b > a]
    if not diffs:
        return 180.0
    return max(3 * statistics.median(diffs), 2.0)


def _pts(samples: list[dict], key: str) -> list[tuple[float, float | None]]:
    out: list[tuple[float, float | None]] = []
    for s in samples:
        v = s.get(key)
        out.append(
            (
                float(s["t"]),
                float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
            )
        )
    return out


def _host_section(h: HostData, t0: float, t1: float) -> str:
    # Long only in layout: a heading and two charts, each series spelled out where it is drawn.
    r = h.row
    state = r.get("state") or "-"
    info = [f"{len(h.jobs)} job(s) in the joblog"]
    if h.jobs:
        info.append(
            f"median run time {format_duration(statistics.median(j.runtime for j in h.jobs))}"
        )
    if h.error_lines:
        info.append(f"{h.error_lines} line(s) in .error")
    if r.get("machine"):
        info.append(f"machine {r['machine']}")
    out = [
        f'<div class="host" id="host-{_e(h.name)}"><h3>{_e(h.name)} '
        f'<span class="state {_e(state.replace(" ", "-"))}">{_e(state)}</span>'
        f'<span class="hostinfo">{_e(" · ".join(info))}</span></h3>'
    ]
    if not h.history:
        out.append(
            '<p class="empty">No history samples yet '
            "(the scheduler writes one every [history] every seconds).</p></div>"
        )
        return "".join(out)
    gap = _gap(h.history)
    out.append(
        '<div class="charthead"><span class="t">Load</span>'
        + legend(
            [
                ("load (all)", C_LOAD, "line"),
                ("foreign load", C_FOREIGN, "fill"),
                ("limit", C_LIMIT, "dash"),
            ]
        )
        + "</div>"
    )
    out.append(
        line_chart(
            [
                Series("foreign load", C_FOREIGN, _pts(h.history, "foreign"), fill=True, width=1.2),
                Series(
                    "limit", C_LIMIT, _pts(h.history, "limit"), step=True, dash="6,4", width=1.6
                ),
                Series("load", C_LOAD, _pts(h.history, "load")),
            ],
            t0,
            t1,
            kind="load",
            host=h.name,
            y_label="load",
            gap=gap,
        )
    )
    out.append(
        '<div class="charthead"><span class="t">Jobs</span>'
        + legend([("running", C_RUNNING, "fill"), ("stopped", C_STOPPED, "line")])
        + "</div>"
    )
    out.append(
        line_chart(
            [
                Series("running", C_RUNNING, _pts(h.history, "running"), step=True, fill=True),
                Series("stopped", C_STOPPED, _pts(h.history, "stopped"), step=True),
            ],
            t0,
            t1,
            kind="jobs",
            host=h.name,
            y_label="jobs",
            gap=gap,
            integer=True,
            height=150,
        )
    )
    out.append("</div>")
    return "".join(out)


def _failed_table(jobs: Sequence[JoblogRow], max_rows: int) -> str:
    failed = [j for j in jobs if j.failed]
    if not failed:
        return '<p class="empty">No job failed.</p>'
    shown = failed[-max_rows:] if max_rows > 0 else []
    note = ""
    if len(shown) < len(failed):
        note = f'<p class="empty">Showing the last {len(shown)} of {len(failed)} failed jobs.</p>'
    head = [
        ("Job", ""),
        ("Started", ""),
        ("Run time", "n"),
        ("Exit", "n"),
        ("Signal", "n"),
        ("Command", ""),
    ]
    rows = [
        note,
        '<table class="failed"><thead><tr>'
        + "".join(f'<th class="{c}">{h}</th>' for h, c in head)
        + "</tr></thead><tbody>",
    ]
    for j in shown:
        rows.append(
            f'<tr><td class="nw">{_e(j.host)}.{j.seq}</td><td class="nw">{_e(_when(j.start))}</td>'
            f'<td class="n">{_e(format_duration(j.runtime))}</td><td class="n">{j.exitval}</td>'
            f'<td class="n">{j.signal or ""}</td><td><code>{_e(j.command)}</code></td></tr>'
        )
    rows.append("</tbody></table>")
    return "".join(rows)


def _section(title: str, body: str, cls: str = "") -> str:
    return f'<section class="panel {cls}"><h2>{_e(title)}</h2>{body}</section>'


def render(data: ReportData, max_failed: int = 500, clock: Callable[[float], str] = _when) -> str:
    tz = time.strftime("%Z", time.localtime(data.generated))
    span = data.span
    sub = f"{data.jobfile} · generated {clock(data.generated)} · times are local ({tz})"
    if span:
        sub += f" · {clock(span[0])} to {clock(span[1])}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>pbq report: {_e(data.jobfile.name)}</title>",
        f"<style>{CSS}</style></head><body><main>",
        f"<h1>pbq report: {_e(data.jobfile.name)}</h1>",
        f'<p class="sub">{_e(sub)}</p>',
        _summary(data),
        _section(
            "Hosts",
            _hosts_table(data)
            if data.hosts
            else '<p class="empty">No scheduler has written any file for this jobfile.</p>',
            "hosts",
        ),
    ]
    with_history = [h for h in data.hosts if h.history or h.jobs]
    if with_history:
        ts = [float(s["t"]) for h in with_history for s in h.history]
        if ts:
            t0, t1 = min(ts), max(ts)
            if t1 - t0 < 10:
                t1 = t0 + 10
            body = "".join(_host_section(h, t0, t1) for h in with_history)
        else:
            body = "".join(_host_section(h, 0, 1) for h in with_history)
        parts.append(_section("Timelines", body, "timelines"))
    n_failed = sum(1 for j in data.jobs if j.failed)
    parts.append(
        _section(
            f"Job run times ({len(data.jobs)} jobs)",
            legend([("succeeded", C_OK, "fill"), ("failed", C_FAILED, "fill")])
            + histogram(data.jobs),
            "runtimes",
        )
    )
    parts.append(
        _section(f"Failed jobs ({n_failed})", _failed_table(data.jobs, max_failed), "failures")
    )
    parts.append(
        f"<footer>pbq {_e(__version__)} · {_e(os.path.basename(str(data.jobfile)))}</footer>"
    )
    parts.append("</main></body></html>\n")
    return "\n".join(parts)
