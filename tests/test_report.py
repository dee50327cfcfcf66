"""``pbq report``: the HTML file written from the files of real scheduler runs.

The structure is checked with html.parser (one SVG timeline of each kind per host, the
run-time histogram, the failed jobs, nothing external).  How it looks was checked by eye
in headless Chromium while developing; no test depends on a browser.
"""

from __future__ import annotations

import re
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pbqtest import (
    FAST_CONFIG,
    config,
    hostfile,
    hostfile_path,
    jobfile,
    lines_of,
    run_cmd,
    start_scheduler,
    wait_exit,
    wait_for,
)

from pbq import report

pytestmark = pytest.mark.timeout(120)

HISTORY_FAST = FAST_CONFIG + "[history]\nevery = 0.5\n"
NASTY = """sh -c 'exit 3' # <b>&amp; "q" </table>"""


def run_queue(
    tmp_path: Path, hosts: list[str], jobs: list[str], extra_config: str = "", samples: int = 3
) -> Path:
    """Run ``jobs`` on real schedulers (one per host) until all have ended and every host
    has written ``samples`` history lines; then quit them."""
    hf = hostfile(tmp_path, "".join(f"{h} linux 16 16 0\n" for h in hosts) + "spare linux 1 1 0\n")
    config(tmp_path, HISTORY_FAST + extra_config)
    jf = jobfile(tmp_path, jobs)
    procs = [start_scheduler(hf, jf, host=h) for h in hosts]

    def finished() -> bool:
        ended = sum(max(0, len(lines_of(hostfile_path(jf, h, "joblog"))) - 1) for h in hosts)
        return ended == len(jobs) and all(len(report.read_history(jf, h)) >= samples for h in hosts)

    wait_for(finished, 60, "every job to end and enough history samples")
    r = run_cmd("pbq", "control", hf, jf, "quit")
    assert r.returncode == 0, r.stdout + r.stderr
    for p in procs:
        assert wait_exit(p, 60) == 0
    return jf


class Page(HTMLParser):
    """What the tests look at: every element with its attributes, SVGs with their
    contents, table rows, and the text of each element kind."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.svgs: list[dict] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._svg: dict | None = None
        self._table: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._in_text = False
        self._group: list[str] = []
        self.feed(text)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "svg":
            self._svg = {
                "class": a.get("class", ""),
                "host": a.get("data-host"),
                "paths": 0,
                "texts": [],
                "bins": [],
                "xlabels": [],
            }
            self.svgs.append(self._svg)
        elif self._svg is not None:
            if tag == "path":
                self._svg["paths"] += 1
            elif tag == "g":
                self._group.append(a.get("class", ""))
                if a.get("class") == "bin":
                    self._svg["bins"].append((int(a["data-ok"]), int(a["data-failed"])))
            elif tag == "text":
                self._in_text = True
        if tag == "table":
            self._table = a.get("class", "")
            self.tables[self._table] = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._svg = None
            self._group = []
        elif tag == "g" and self._group:
            self._group.pop()
        elif tag == "text":
            self._in_text = False
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        if self._svg is not None and self._in_text:
            self._svg["texts"].append(data)
            if self._group and self._group[-1] == "xaxis":
                self._svg["xlabels"].append(data)

    def charts(self, kind: str, host: str | None = None) -> list[dict]:
        return [
            s
            for s in self.svgs
            if s["class"] == f"chart {kind}" and (host is None or s["host"] == host)
        ]


def test_report_of_two_real_schedulers(tmp_path: Path) -> None:
    jobs = ["sleep 0.2"] * 8 + ["sleep 1.5", NASTY, "sh -c 'kill -9 $$'", "false"]
    jf = run_queue(tmp_path, ["h1", "h2"], jobs)
    hf = tmp_path / "hostfile"
    for h in ("h1", "h2"):
        assert len(lines_of(hostfile_path(jf, h, "history"))) >= 2
    r = run_cmd("pbq", "report", hf, jf, "-o", tmp_path / "report.html")
    assert r.returncode == 0, r.stderr
    assert b"wrote" in r.stderr and b"12 job(s), 3 failed" in r.stderr
    raw = (tmp_path / "report.html").read_text()
    page = Page(raw)

    # Self-contained: no scripts, nothing loaded from anywhere.
    tags = {t for t, _ in page.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    for tag, attrs in page.tags:
        assert not any(k.startswith("on") for k in attrs), (tag, attrs)
        for k, v in attrs.items():
            if k != "xmlns":
                assert "http:" not in v and "https:" not in v, (tag, k, v)
    assert "url(" not in raw and "@import" not in raw

    # One load and one jobs timeline per host that ran; none for the host that did not.
    for h in ("h1", "h2"):
        (load,) = page.charts("load", h)
        (jobsc,) = page.charts("jobs", h)
        assert load["paths"] >= 3  # foreign (filled), limit, load
        assert jobsc["paths"] >= 2
        assert load["xlabels"] and all(
            re.search(r"\b\d\d:\d\d(:\d\d)?$", x) for x in load["xlabels"]
        ), load["xlabels"]
        assert "0" in load["texts"]  # y axis ticks start at 0
    assert page.charts("load", "spare") == []
    assert len(page.charts("load")) == len(page.charts("jobs")) == 2

    # Histogram of every job's run time; failed ones counted apart.
    (hist,) = page.charts("histogram")
    assert sum(ok + bad for ok, bad in hist["bins"]) == 12
    assert sum(bad for _, bad in hist["bins"]) == 3

    # The failed jobs, with their commands shown as text (escaped), exit and signal.
    rows = page.tables["failed"]
    assert rows[0] == ["Job", "Started", "Run time", "Exit", "Signal", "Command"]
    by_cmd = {row[5]: row for row in rows[1:]}
    assert set(by_cmd) == {NASTY, "sh -c 'kill -9 $$'", "false"}
    assert by_cmd[NASTY][3:5] == ["3", ""]
    assert by_cmd["sh -c 'kill -9 $$'"][4] == "9"
    assert by_cmd["false"][3] == "1"
    assert "&lt;b&gt;&amp;amp;" in raw and "<b>" not in raw

    hosts = page.tables["hosts"]
    assert [row[0] for row in hosts[1:]] == ["h1", "h2", "spare"]
    assert [row[1] for row in hosts[1:]] == ["exited", "exited", "not started"]

    stdout = run_cmd("pbq", "report", hf, jf, "-o", "-")
    assert stdout.returncode == 0
    assert stdout.stdout.startswith(b"<!DOCTYPE html>")
    assert len(Page(stdout.stdout.decode()).charts("load")) == 2


def test_report_reads_rotated_history(tmp_path: Path) -> None:
    jf = run_queue(tmp_path, ["h1"], ["sleep 3", "true"], extra_config="max_bytes = 400\n")
    hist = hostfile_path(jf, "h1", "history")
    rotated = hist.with_name(hist.name + ".1")
    assert rotated.exists(), "the scheduler rotates its history at [history] max_bytes"
    samples = report.read_history(jf, "h1")
    assert len(samples) == len(lines_of(rotated)) + len(lines_of(hist))
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts)
    assert {"load", "foreign", "limit", "running", "stopped"} <= set(samples[0])


def test_report_before_any_scheduler_ran(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "h1 linux 1 1 0\n")
    jf = jobfile(tmp_path, ["true", "true"])
    r = run_cmd("pbq", "report", hf, jf, "-o", tmp_path / "r.html")
    assert r.returncode == 0, r.stderr
    page = Page((tmp_path / "r.html").read_text())
    assert page.svgs == []
    assert "No job has finished yet." in (tmp_path / "r.html").read_text()


def test_report_user_errors(tmp_path: Path) -> None:
    hf = hostfile(tmp_path, "h1 linux 1 1 0\n")
    jf = jobfile(tmp_path, [])
    for args, word in (
        ([hf, tmp_path / "missing"], "no such jobfile"),
        ([hf, jf, "-o", tmp_path / "no" / "dir" / "r.html"], "directory does not exist"),
    ):
        r = run_cmd("pbq", "report", *args)
        assert r.returncode == 2, r.stdout + r.stderr
        text = r.stderr.decode()
        assert "Traceback" not in text and len(text.strip().splitlines()) == 1 and word in text, (
            text
        )


# ------------------------------------------------------------------ pieces


def test_time_ticks_are_round_local_times() -> None:
    t0 = time.mktime((2024, 3, 5, 10, 7, 13, 0, 0, -1))
    ticks = report.time_ticks(t0, t0 + 3600)
    assert [label for _, label in ticks] == ["10:10", "10:20", "10:30", "10:40", "10:50", "11:00"]
    assert all(
        time.localtime(t).tm_min % 10 == 0 and time.localtime(t).tm_sec == 0 for t, _ in ticks
    )
    short = report.time_ticks(t0, t0 + 40)
    assert [label for _, label in short] == [
        "10:07:15",
        "10:07:20",
        "10:07:25",
        "10:07:30",
        "10:07:35",
        "10:07:40",
        "10:07:45",
        "10:07:50",
    ]
    days = report.time_ticks(t0, t0 + 2 * 86400)
    assert days[0][1].endswith("12:00") and len(days[0][1]) > 5  # the date is shown when it changes


def test_value_ticks_and_histogram_edges() -> None:
    assert report.value_ticks(3.7) == [0, 1, 2, 3, 4]
    assert report.value_ticks(0) == [0, 0.025, 0.05, 0.075, 0.1]
    assert report.value_ticks(7, integer=True) == [0, 2, 4, 6, 8]
    assert report.value_ticks(1, integer=True) == [0, 1]
    assert report.histogram_edges([0.0, 0.3, 4.0]) == [
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
    ]
    assert report.histogram_edges([90, 4000]) == [60, 120, 300, 600, 1200, 1800, 3600, 7200]
    assert [report.short_duration(s) for s in (0.005, 0.5, 30, 120, 7200, 86400)] == [
        "5ms",
        "500ms",
        "30s",
        "2m",
        "2h",
        "1d",
    ]


def test_lines_break_where_the_scheduler_was_down() -> None:
    pts = [(0.0, 1.0), (60.0, 2.0), (120.0, None), (180.0, 1.0), (1000.0, 3.0), (1060.0, 3.0)]
    assert report.segments(pts, gap=180) == [
        [(0.0, 1.0), (60.0, 2.0)],
        [(180.0, 1.0)],
        [(1000.0, 3.0), (1060.0, 3.0)],
    ]


def test_long_histories_are_bucketed() -> None:
    pts = [(float(i), float(i % 7)) for i in range(10000)]
    svg = report.line_chart(
        [report.Series("load", "#000", pts)], 0, 9999, kind="load", host="h", y_label="load", gap=5
    )
    assert svg.count("L") <= report.MAX_POINTS + 10
    assert 'class="chart load"' in svg


def test_report_data_matches_status(tmp_path: Path) -> None:
    jf = run_queue(tmp_path, ["h1"], ["true", "false", "true"])
    data = report.collect(jf, tmp_path / "hostfile")
    assert (data.status["done"], data.status["failed"]) == (2, 1)
    assert [h.name for h in data.hosts] == ["h1", "spare"]
    assert len(data.jobs) == 3
    html = report.render(data)
    assert html.count('class="chart load"') == 1
