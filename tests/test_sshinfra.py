"""Proves tests/sshinfra.py: a private sshd reachable as two host names, and two
sshfs mounts of one directory that behave like two hosts' views of a network
file system.  Needs root; installs openssh-server/openssh-client/sshfs/fuse3
when missing.  Skips otherwise -- fails instead when CI=true.

Observed values (visibility latencies, race outcomes, flock behaviour) are
attached to each test with ``record_property`` (see ``--junitxml``).
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

try:
    from tests import sshinfra
except ImportError:  # tests/ is not a package: pytest put tests/ on sys.path
    import sshinfra

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(120)]

RecordProperty = Callable[[str, object], None]


def poll_until(pred: Callable[[], bool], deadline_s: float = 2.0) -> float:
    """Seconds until ``pred()`` was true; fails the test at the deadline."""
    t0 = time.monotonic()
    while True:
        try:
            if pred():
                return time.monotonic() - t0
        except OSError:
            pass
        if time.monotonic() - t0 > deadline_s:
            pytest.fail(f"condition not reached within {deadline_s} s")
        time.sleep(0.001)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


@pytest.fixture(scope="module")
def server() -> Iterator[sshinfra.SshServer]:
    sshinfra.require_infra()
    dot_ssh = Path.home() / ".ssh"
    had_dot_ssh = dot_ssh.exists()
    with sshinfra.SshServer() as srv:
        pid = srv.pid
        yield srv
    assert pid is not None and not psutil.pid_exists(pid)
    if not had_dot_ssh:
        assert not dot_ssh.exists(), "ssh created ~/.ssh although it was run with -F"


@pytest.fixture(scope="module")
def mounts(
    server: sshinfra.SshServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[sshinfra.TwoMounts]:
    base = tmp_path_factory.mktemp("sshinfra")
    with sshinfra.shared_dir_two_mounts(base, server=server) as m:
        yield m
    assert not sshinfra.is_mounted(m.mount_a)
    assert not sshinfra.is_mounted(m.mount_b)


@pytest.fixture
def dirs(mounts: sshinfra.TwoMounts, request: pytest.FixtureRequest) -> tuple[Path, Path, Path]:
    """A fresh subdirectory of the shared directory: (real, via A, via B)."""
    name = request.node.name
    (mounts.real_dir / name).mkdir()
    return mounts.real_dir / name, mounts.mount_a / name, mounts.mount_b / name


# ---------------------------------------------------------------- ssh


def test_ssh_runs_commands_on_both_host_names(server: sshinfra.SshServer) -> None:
    assert len(server.host_aliases) == 2
    for host in server.host_aliases:
        res = server.run(host, "echo $((6 * 7)) $SSH_CONNECTION")
        out = res.stdout.split()
        assert out[0] == "42"
        assert out[-2:] == ["127.0.0.1", str(server.port)]
        # The same through ssh_argv and through an --rsh style string.
        argv = [*server.ssh_argv(host), "echo", "argv-ok"]
        assert subprocess.run(argv, capture_output=True, text=True, check=True,
                              timeout=30).stdout == "argv-ok\n"
        rsh = [*shlex.split(server.rsh_command()), host, "echo rsh-ok"]
        assert subprocess.run(rsh, capture_output=True, text=True, check=True,
                              timeout=30).stdout == "rsh-ok\n"
    # An unknown host name is not silently mapped to the test server.
    res = subprocess.run([*server.ssh_argv("pbqhost-nonexistent.invalid"), "true"],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode != 0


def test_server_stop_kills_its_sshd_and_removes_state() -> None:
    sshinfra.require_infra(sshinfra.SSH_PACKAGES)
    srv = sshinfra.SshServer(aliases=("pbqhost-x",))
    with srv:
        pid, state = srv.pid, srv.state_dir
        assert pid is not None and psutil.pid_exists(pid)
        assert int(srv.pid_file.read_text()) == pid
        # A lingering session must not survive stop() either.
        lingering = subprocess.Popen([*srv.ssh_argv("pbqhost-x"), "sleep 60"],
                                     stdin=subprocess.DEVNULL)
        poll_until(lambda: len(psutil.Process(pid).children()) > 0, 10)
    try:
        assert lingering.wait(timeout=10) != 0
    finally:
        if lingering.poll() is None:
            lingering.kill()
            lingering.wait()
    assert not psutil.pid_exists(pid)
    assert not state.exists()


# ---------------------------------------------------------------- mounts


def test_o_excl_on_a_excludes_o_excl_on_b(dirs: tuple[Path, Path, Path]) -> None:
    _, a, b = dirs
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY
    assert not (b / "lock").exists()  # prime B's (negative) lookup caches
    os.close(os.open(a / "lock", flags))
    with pytest.raises(FileExistsError):
        os.open(b / "lock", flags)
    os.unlink(a / "lock")
    # ...and once A removed it, B can take it at once.
    os.close(os.open(b / "lock", flags))
    with pytest.raises(FileExistsError):
        os.open(a / "lock", flags)


_RACE = """
import os, sys
won, eexist, eperm = [], 0, 0
for i in range(int(sys.argv[2])):
    try:
        os.close(os.open(f"{sys.argv[1]}/lock{i}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        won.append(i)
    except FileExistsError:
        eexist += 1
    except PermissionError:
        eperm += 1
print(" ".join(map(str, won)), "|", eexist, eperm)
"""


def test_o_excl_race_has_exactly_one_winner(
    dirs: tuple[Path, Path, Path], record_property: RecordProperty
) -> None:
    """Concurrent O_EXCL creates through A and B: exactly one wins each name.

    A loser whose lookup already sees the file gets EEXIST from the kernel; a
    loser that reaches the server first gets SFTP's generic SSH_FX_FAILURE
    (protocol v3 has no "already exists"), which sshfs maps to EPERM.  So on
    sshfs an O_EXCL lock attempt can fail with PermissionError, not only
    FileExistsError.
    """
    _, a, b = dirs
    n = 100
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(m), str(n)],
                         stdout=subprocess.PIPE, text=True)
        for m in (a, b)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    won: list[set[int]] = []
    errors = []
    for out in outs:
        wins, counts = out.split("|")
        won.append({int(x) for x in wins.split()})
        errors.append(tuple(int(x) for x in counts.split()))
    assert not (won[0] & won[1]), "two winners for one O_EXCL name"
    assert won[0] | won[1] == set(range(n)), "a name nobody won"
    record_property(
        "o_excl_race",
        f"A won {len(won[0])}, B won {len(won[1])}; losers EEXIST/EPERM: "
        f"A {errors[0]}, B {errors[1]}",
    )


def test_replace_on_a_is_visible_on_b(
    dirs: tuple[Path, Path, Path], record_property: RecordProperty
) -> None:
    _, a, b = dirs
    state_a, state_b = a / "state.json", b / "state.json"
    state_a.write_text(json.dumps({"v": 1}))
    assert json.loads(state_b.read_text()) == {"v": 1}  # prime B's caches
    os.stat(state_b)
    seen = []
    for v, pad in ((2, ""), (3, "x" * 1000), (4, "")):  # grow, then shrink
        tmp = a / f".state.json.{v}.tmp"
        tmp.write_text(json.dumps({"v": v, "pad": pad}))
        os.replace(tmp, state_a)
        seen.append(poll_until(lambda v=v: json.loads(state_b.read_text())["v"] == v))
        assert os.stat(state_b).st_size == os.stat(state_a).st_size
    assert sorted(os.listdir(b)) == ["state.json"]
    record_property("replace_visible_on_b", ", ".join(_ms(s) for s in seen))
    assert max(seen) < 0.5


def test_write_without_close_is_visible_on_b_at_once(dirs: tuple[Path, Path, Path]) -> None:
    """sshfs_sync: a write(2) that returned on A is on the server (no polling)."""
    _, a, b = dirs
    fa = os.open(a / "log", os.O_CREAT | os.O_WRONLY | os.O_APPEND)
    fb = os.open(b / "log", os.O_RDONLY)
    try:
        for i in range(50):
            line = b"%05d\n" % i
            os.write(fa, line)
            assert os.fstat(fb).st_size == 6 * (i + 1)
            assert os.read(fb, 4096) == line  # a tailing reader sees it too
    finally:
        os.close(fa)
        os.close(fb)


def test_appends_from_a_and_b_both_land(dirs: tuple[Path, Path, Path]) -> None:
    real, a, b = dirs
    with open(a / "jobs", "a") as f:
        f.write("from A\n")
    with open(b / "jobs", "a") as f:
        f.write("from B\n")
    for view in (real, a, b):
        assert (view / "jobs").read_text() == "from A\nfrom B\n"


_APPENDER = """
import sys
for i in range(int(sys.argv[3])):
    with open(sys.argv[1], "a") as f:
        f.write(f"{sys.argv[2]} {i:05d} " + "x" * 60 + "\\n")
"""


def test_concurrent_appends_do_not_tear_lines(dirs: tuple[Path, Path, Path]) -> None:
    """Without direct_io, this tears lines (the kernel appends at a stale size)."""
    real, a, b = dirs
    n = 300
    procs = [
        subprocess.Popen([sys.executable, "-c", _APPENDER, str(m / "jobs"), tag, str(n)])
        for m, tag in ((a, "A"), (b, "B"))
    ]
    for p in procs:
        assert p.wait(timeout=60) == 0
    lines = (real / "jobs").read_text().splitlines()
    torn = [line for line in lines if len(line) != 68]
    assert not torn, torn[:3]
    for tag in "AB":
        assert [int(x.split()[1]) for x in lines if x[0] == tag] == list(range(n))


_REPLACER = """
import json, os, sys, time
d, tag, until = sys.argv[1], sys.argv[2], float(sys.argv[3])
i = 0
while time.time() < until:
    tmp = f"{d}/.state.{tag}.tmp"
    with open(tmp, "w") as f:
        json.dump({"writer": tag, "seq": i, "pad": "p" * (i % 500)}, f)
    os.replace(tmp, f"{d}/state.json")
    i += 1
print(i)
"""


def _replace_stress(
    writers: dict[str, Path], readers: list[Path], seconds: float
) -> tuple[list[int], int, list[str]]:
    """Writers replace state.json in a loop while we read it through ``readers``.

    Returns (writes per writer, good reads, errors)."""
    until = time.time() + seconds
    procs = [
        subprocess.Popen([sys.executable, "-c", _REPLACER, str(m), tag, str(until)],
                         stdout=subprocess.PIPE, text=True)
        for tag, m in writers.items()
    ]
    reads, bad = 0, []
    try:
        while time.time() < until:
            for view in readers:
                try:
                    doc = json.loads((view / "state.json").read_text())
                except (OSError, ValueError) as exc:
                    bad.append(type(exc).__name__)
                else:
                    assert doc["writer"] in ("init", *writers)
                    reads += 1
    finally:
        writes = [int(p.communicate(timeout=60)[0]) for p in procs]
    return writes, reads, bad


def test_replace_on_a_is_atomic_for_readers_on_b(
    dirs: tuple[Path, Path, Path], record_property: RecordProperty
) -> None:
    """A process on A keeps replacing state.json; B never sees it missing,
    empty or partial."""
    real, a, b = dirs
    (a / "state.json").write_text(json.dumps({"writer": "init"}))
    writes, reads, bad = _replace_stress({"A": a}, [b], 1.0)
    record_property("replace_a_read_b", f"writes {writes}, reads {reads}, errors {len(bad)}")
    assert not bad, bad[:5]
    assert writes[0] > 10 and reads > 10
    assert sorted(os.listdir(real)) == ["state.json"]


def test_replace_over_file_open_on_same_mount_hides_it(dirs: tuple[Path, Path, Path]) -> None:
    """The mechanism behind the caveat above, deterministically."""
    real, a, b = dirs
    (a / "state").write_text("old")
    with open(a / "state") as held:
        (a / "state.tmp").write_text("new")
        os.replace(a / "state.tmp", a / "state")
        names = sorted(os.listdir(real))
        assert names[0].startswith(".fuse_hidden") and names[1:] == ["state"]
        assert (b / "state").read_text() == "new"
        assert held.read() == "old"
    poll_until(lambda: sorted(os.listdir(real)) == ["state"])


def test_flock_on_a_does_not_exclude_b(
    dirs: tuple[Path, Path, Path], record_property: RecordProperty
) -> None:
    """Recorded, not required: sshfs has no lock support, so flock is local
    to each mount (as with NFS without a lock manager).  pbq must not rely on
    it across hosts."""
    _, a, b = dirs
    (a / "flock").write_text("")
    with open(a / "flock") as fa, open(b / "flock") as fb:
        fcntl.flock(fa, fcntl.LOCK_EX | fcntl.LOCK_NB)
        try:
            fcntl.flock(fb, fcntl.LOCK_EX | fcntl.LOCK_NB)
            outcome = "not exclusive across mounts"
        except BlockingIOError:
            outcome = "exclusive across mounts"
    record_property("flock_across_mounts", outcome)


def test_busy_mount_is_still_unmounted(
    server: sshinfra.SshServer, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    mnt = tmp_path / "mnt"
    cwd = os.getcwd()
    mount = sshinfra.SshfsMount(server, tmp_path / "real", mnt, host=server.host_aliases[1])
    with mount:
        sshfs_pid = mount.pid
        assert sshfs_pid is not None and sshinfra.is_mounted(mnt)
        held = open(mnt / "held", "w")  # noqa: SIM115 - kept open on purpose
        os.chdir(mnt)
    try:
        assert not sshinfra.is_mounted(mnt)
        assert not psutil.pid_exists(sshfs_pid)
    finally:
        os.chdir(cwd)
        try:
            held.close()
        except OSError:
            pass  # ENOTCONN: sshfs was stopped under the open file
    assert (tmp_path / "real" / "held").exists()
