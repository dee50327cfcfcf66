"""pbq.predict: command keys, the JSON-lines store, memory prediction."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from pbq.drm.base import parse_size
from pbq.predict import (
    MIN_RUNS,
    ResourceStore,
    command_key,
    format_mem,
    predict_from_peaks,
)

MB = 1 << 20


@pytest.mark.parametrize(
    ("command", "key"),
    [
        ("bwa mem -t 8 ref.fa a.fq > a.sam", "bwa mem -t"),
        ("bwa mem -t 16 /data/ref.fa b.fq 2> err.log > b.sam", "bwa mem -t"),
        ("/usr/local/bin/bwa index ref.fa", "bwa index"),
        (
            "OMP_NUM_THREADS=4 samtools sort -o x.bam --threads=4 in.bam | head",
            "samtools sort -o --threads",
        ),
        ("python3 /opt/tools/align.py --in a.txt --out=b.txt", "python3 align.py --in --out"),
        ("Rscript plot.R -v data.csv", "Rscript plot.R -v"),
        ("sort -k2 -n file.txt 2>/dev/null", "sort -k2 -n"),
        ("gzip -dc - < in.gz", "gzip -dc"),
        ("ls -la /tmp && echo done", "ls -la"),
        ("wc -l 'my file.txt'; echo", "wc -l"),
        ('echo "unbalanced', "echo"),
        ("X=1", ""),
        ("", ""),
    ],
)
def test_command_key(command: str, key: str) -> None:
    assert command_key(command) == key


def test_inputs_and_option_values_do_not_change_the_key() -> None:
    a = command_key("blastn -query q1.fa -db nt -evalue 1e-5 -out r1.txt")
    b = command_key("blastn -query /x/q2.fa -db /y/nr -evalue 10 -out r2.txt")
    assert a == b == "blastn -query -db -evalue -out"
    assert command_key("samtools view -b in.bam") != command_key("samtools sort in.bam")


def test_predict_from_peaks() -> None:
    assert MIN_RUNS == 3
    assert predict_from_peaks([]) is None
    assert predict_from_peaks([100 * MB, 200 * MB]) is None
    assert predict_from_peaks([100 * MB, None, 200 * MB]) is None  # unmeasured runs do not count
    assert predict_from_peaks([100 * MB, 300 * MB, 200 * MB]) == 360 * MB
    assert predict_from_peaks([1, 1, 1]) == MB  # rounded up to a whole MB
    assert predict_from_peaks([1000 * MB + 1, 5, 5]) == 1201 * MB


def test_format_mem_round_trips_through_resources() -> None:
    assert format_mem(360 * MB) == "360M"
    assert format_mem(MB + 1) == "2M"
    assert format_mem(0) == "1M"
    assert parse_size(format_mem(1234 * MB)) == 1234 * MB


def test_store_records_and_predicts(tmp_path: Path) -> None:
    store = ResourceStore(tmp_path / "sub" / "runs.jsonl")
    key = command_key("bwa mem -t 8 ref.fa a.fq")
    assert store.runs() == [] and store.predict_mem(key) is None
    store.record(key, 100 * MB, 12.5, 20.0)
    store.record(key, 250 * MB, 30.0, 41.0)
    store.record("other", 900 * MB, 1.0, 1.0)
    assert store.predict_mem(key) is None
    store.record(key, None, None, 3.0)  # a run whose memory was not measured
    assert store.predict_mem(key) is None
    store.record(key, 200 * MB, 10.0, 15.0)
    assert store.predict_mem(key) == 300 * MB
    assert store.predict_mem_for("bwa mem -t 2 other.fa b.fq") == 300 * MB
    runs = store.runs(key)
    assert [r.peak_rss_bytes for r in runs] == [100 * MB, 250 * MB, None, 200 * MB]
    assert runs[0].cpu_seconds == 12.5 and runs[0].runtime == 20.0 and runs[0].time > 0
    lines = (tmp_path / "sub" / "runs.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["key"] == "bwa mem -t"


def test_store_skips_damaged_lines(tmp_path: Path) -> None:
    path = tmp_path / "runs.jsonl"
    path.write_text(
        '{"key": "a", "peak_rss_bytes": 1048576}\n'
        "not json\n"
        '{"key": "a", "peak_rss_bytes": "big"}\n'
        '{"peak_rss_bytes": 5}\n'
        '{"key": "a", "peak_rss_bytes": 2097152, "cpu_seconds": 1, "runtime": 2}\n'
        '{"key": "a", "peak_rss_bytes": 3145728\n'
    )
    store = ResourceStore(path)
    assert [r.peak_rss_bytes for r in store.runs("a")] == [MB, 2 * MB]
    store.record("a", 3 * MB, None, None)
    assert store.predict_mem("a") == 4 * MB  # ceil(1.2 * 3 MB)


def _append_many(path: str, worker: int) -> None:
    store = ResourceStore(path)
    for i in range(50):
        store.record(f"k{worker}", (i + 1) * MB, float(i), float(i))


def test_store_appends_from_many_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "runs.jsonl")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in workers:
        p.start()
    for p in workers:
        p.join(30)
    store = ResourceStore(path)
    assert len(store.runs()) == 200
    assert all(len(store.runs(f"k{w}")) == 50 for w in range(4))
    assert store.predict_mem("k0") == 60 * MB
