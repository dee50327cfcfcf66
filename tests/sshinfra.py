"""Throw-away ssh / sshfs test infrastructure: "two hosts" on one machine.

Nothing here touches the invoking user's home directory (no ``~/.ssh``, no
``known_hosts`` there) or ``/etc/hosts``.  Everything lives in a private state
directory that is removed on exit:

* :class:`SshServer` runs a private ``sshd -D`` on ``127.0.0.1:<free port>``
  with its own host key, user key, ``authorized_keys`` and a private client
  ``ssh_config``.  That config maps the host names ``pbqhost-a`` and
  ``pbqhost-b`` (and ``127.0.0.1``/``localhost``) to the private server, so
  ``ssh -F <config> pbqhost-a cmd`` and ``ssh -F <config> pbqhost-b cmd`` are
  two "different hosts".  Passing ``-F`` also stops ssh from creating
  ``~/.ssh``.  The server's host key is pre-seeded into a private
  ``known_hosts`` under one ``HostKeyAlias``, so ``StrictHostKeyChecking yes``
  works for every alias and parallel first connections never race to write
  ``known_hosts``.
* :class:`SshfsMount` mounts a directory through that server with ``sshfs``
  using :data:`COHERENT_OPTIONS`; two mounts of one directory behave like two
  hosts' views of a network file system (O_EXCL honoured, flock not).
* :func:`shared_dir_two_mounts` gives ``(real_dir, mount_a, mount_b)``.
* :func:`ensure_packages` / :func:`require_infra` install what is missing
  (as root) and skip -- or fail when ``CI=true`` -- otherwise.

The only system state touched: Debian packages (installed on demand) and
``/run/sshd`` (sshd's privilege-separation directory, created if missing and
left in place because a concurrent test server may be using it).

Choice of sshfs options (measured)
----------------------------------
sshfs 3.7.3, libfuse 3.14, kernel 6.18, OpenSSH 9.2 sftp-server, two mounts
of one directory via ``pbqhost-a``/``pbqhost-b``; "stale" = B still wrong
after polling for 3 s.  (``cache=no`` from sshfs 2.x no longer exists.)

=========================  ==================================================
options                    observed on mount B after an operation on mount A
=========================  ==================================================
(defaults)                 new name missing from listdir, st_size after an
                           append, a tailing reader, a deleted name: all
                           stale (sshfs dir cache, 20 s); O_EXCL after A
                           removed the lock: EEXIST (stale); concurrent
                           O_APPEND from A and B: 8/600 lines torn
``*_timeout=0`` only       same as defaults (sshfs' own cache dominates)
``dir_cache=no`` only      the above fine, but a deleted name still existed
                           for 981 ms (kernel entry cache); 4/600 torn lines
``dir_cache=no,*_timeout   every visibility check < 2 ms; still 4/600 torn
=0``                       lines (page-cache O_APPEND uses a stale i_size)
``+direct_io``             appends intact (600/600; 4 writers: 4000/4000),
                           but a write(2) that had returned on A was missing
                           on B for an immediate fstat 58/300 times and for
                           a tailing read 44/300 times (async sshfs writes)
``+sshfs_sync``            0/300 and 0/300: write returned => visible
``+no_readahead``          no measurable difference; kept as insurance
=========================  ==================================================

With every set: O_EXCL through A then B gives FileExistsError; racing O_EXCL
creates (100 names, one process per mount) always have exactly one winner,
but ~40 % of the losers get **PermissionError (EPERM)** instead of
FileExistsError -- SFTP v3 has no "already exists" status, OpenSSH answers
SSH_FX_FAILURE and sshfs maps it to EPERM.  ``flock`` is never exclusive
across mounts.  ``os.replace`` over an existing file works (sshfs uses the
``posix-rename@openssh.com`` extension; ``workaround=rename`` is not needed
and would be non-atomic).  Executing a script that lives on the mount works.
Cost of the chosen set: 4 MiB written in 0.03 s, read in 0.03 s; 4 x 1000
open-append-close cycles in ~1.8 s.

Caveat -- libfuse "hide on rename" (like NFS silly-rename): when a file is
replaced by ``rename``/``os.replace`` (or unlinked) *while a process on the
same mount has it open*, libfuse first renames it to ``.fuse_hiddenXXXX`` on
the server and then renames the new file into place.  Other mounts can see
the name missing in between (measured: writers and readers on both mounts,
~15 FileNotFoundError per 1.5 s, never a torn document), and under such
concurrency ``.fuse_hidden*`` files can be left behind permanently.  libfuse 3
has no ``hard_remove`` mount option to turn this off.  Writers on A with
readers only on B: zero errors, zero leftovers.  So code under test must
retry a read that hits FileNotFoundError on a replaced state file and ignore
``.fuse_hidden*`` (and NFS's ``.nfs*``) names.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import NamedTuple, NoReturn

import psutil

SSH_PACKAGES: list[str] = ["openssh-server", "openssh-client"]
SSHFS_PACKAGES: list[str] = ["openssh-server", "openssh-client", "sshfs", "fuse3"]

DEFAULT_ALIASES: tuple[str, str] = ("pbqhost-a", "pbqhost-b")
HOST_KEY_ALIAS = "pbq-testbed-sshd"

#: sshfs/FUSE options under which two mounts of one directory stay coherent
#: enough for pbq's shared-directory protocol (O_EXCL lock files, appended
#: jobfiles, small state files replaced with ``os.replace``).  Measurements:
#: see "Choice of sshfs options" in the module docstring.
#:
#: ``dir_cache=no``
#:     sshfs' own cache of names, attributes and symlinks (default on, 20 s).
#: ``attr_timeout=0,entry_timeout=0,negative_timeout=0``
#:     the kernel's attribute/name caches (1 s by default).
#: ``direct_io``
#:     no page cache: every read() goes to the server (tailing readers see
#:     appends), and O_APPEND writes append at the server's end of file
#:     instead of a stale cached size (otherwise lines get torn).
#:     MAP_PRIVATE mmap/execve still work; MAP_SHARED mmap does not.
#: ``sshfs_sync``
#:     write() returns after the server applied it (default: pipelined), so
#:     "write returned on A" implies "visible on B".
#: ``no_readahead``
#:     no speculative reads in sshfs; no measured effect, kept as insurance.
#:
#: Not used: ``kernel_cache``/``auto_cache`` (page caching, moot with
#: direct_io), ``workaround=rename`` (posix-rename is used already and atomic),
#: ``reconnect`` (a silent reconnect invalidates open handles; a test should
#: fail loudly instead).
COHERENT_OPTIONS: tuple[str, ...] = (
    "dir_cache=no",
    "attr_timeout=0",
    "entry_timeout=0",
    "negative_timeout=0",
    "direct_io",
    "sshfs_sync",
    "no_readahead",
)

#: Always added by :class:`SshfsMount`: if the sshfs process dies, the FUSE
#: helper unmounts, so a crash never leaves a dead mount behind.
SAFETY_OPTIONS: tuple[str, ...] = ("auto_unmount",)

_SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class InfraError(RuntimeError):
    """The test infrastructure could not be set up or torn down."""


# --------------------------------------------------------------------------
# packages


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", "") + ":" + _SBIN_PATH
    return shutil.which(name, path=path)


def missing_packages(packages: Sequence[str]) -> list[str]:
    """The subset of Debian ``packages`` that is not installed."""
    if _which("dpkg-query") is None:
        return list(packages)
    missing = []
    for pkg in packages:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", pkg],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0 or not res.stdout.strip().endswith(" installed"):
            missing.append(pkg)
    return missing


def _apt_install(packages: Sequence[str]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    return subprocess.run(
        ["apt-get", "-o", "DPkg::Lock::Timeout=300", "install", "-y", "--no-install-recommends",
         *packages],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )


def ensure_packages(packages: Sequence[str]) -> str | None:
    """Install the Debian ``packages`` that are missing.

    Returns None when all are installed (afterwards), else a one-line reason
    (not root, no apt-get, apt failed).  The caller decides to skip or fail.
    """
    missing = missing_packages(packages)
    if not missing:
        return None
    if os.geteuid() != 0:
        return f"packages {' '.join(missing)} missing and not root to install them"
    if _which("apt-get") is None:
        return f"packages {' '.join(missing)} missing and no apt-get"
    res = _apt_install(missing)
    if res.returncode != 0:
        # Stale or empty package lists are the usual cause: update once, retry.
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"],
                       capture_output=True, text=True, env=env, check=False)
        res = _apt_install(missing)
    if res.returncode != 0:
        tail = " | ".join((res.stdout + res.stderr).strip().splitlines()[-3:])
        return f"apt-get install {' '.join(missing)} failed ({res.returncode}): {tail}"
    still = missing_packages(missing)
    if still:
        return f"packages {' '.join(still)} still missing after apt-get install"
    return None


def infra_unavailable(packages: Sequence[str] = SSHFS_PACKAGES) -> str | None:
    """:func:`ensure_packages` plus the other preconditions; None if all good."""
    if os.geteuid() != 0:
        return "needs root (sshd with PermitRootLogin, FUSE mounts)"
    reason = ensure_packages(packages)
    if reason is not None:
        return reason
    if "sshfs" in packages or "fuse3" in packages:
        if not os.path.exists("/dev/fuse"):
            return "/dev/fuse does not exist (no FUSE in this kernel/container)"
        if _which("fusermount3") is None and _which("fusermount") is None:
            return "no fusermount3/fusermount"
    return None


def require_infra(packages: Sequence[str] = SSHFS_PACKAGES) -> None:
    """In a pytest test/fixture: skip if the infrastructure is unavailable,
    but fail instead when the environment variable ``CI`` is ``true``."""
    reason = infra_unavailable(packages)
    if reason is not None:
        skip_or_fail(reason)


def skip_or_fail(reason: str) -> NoReturn:
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


# --------------------------------------------------------------------------
# helpers


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _read_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _terminate_tree(procs: Sequence[psutil.Process], timeout: float = 5.0) -> None:
    """SIGTERM ``procs``, wait, SIGKILL whatever is left."""
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(procs), timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=timeout)


def mounted_paths() -> set[str]:
    """Mount points in this mount namespace (octal escapes decoded)."""
    result = set()
    with open("/proc/self/mounts", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 2:
                result.add(fields[1].encode("latin-1", "surrogateescape")
                           .decode("unicode_escape"))
    return result


def is_mounted(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a mount point -- also for a dead FUSE mount, where
    ``os.path.ismount`` says False because stat() fails with ENOTCONN."""
    return os.path.abspath(path) in mounted_paths()


# --------------------------------------------------------------------------
# sshd


class SshServer:
    """A private sshd on 127.0.0.1, reachable as several host names.

    Use as a context manager (or call :meth:`start`/:meth:`stop`)::

        with SshServer() as srv:
            subprocess.run([*srv.ssh_argv("pbqhost-a"), "hostname"], check=True)
            subprocess.run(["pbq", "--rsh", srv.rsh_command(), ...])

    State (keys, configs, pid file, log) lives in ``state_dir`` (a fresh
    temporary directory unless given; removed at stop only if created here).
    """

    def __init__(
        self,
        aliases: Sequence[str] = DEFAULT_ALIASES,
        state_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 20.0,
    ) -> None:
        self.host_aliases: tuple[str, ...] = tuple(aliases)
        self._given_state_dir = Path(state_dir) if state_dir is not None else None
        self.start_timeout = start_timeout
        self.state_dir: Path = Path()
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._ps: psutil.Process | None = None
        self._owns_state_dir = False

    # paths inside state_dir
    @property
    def host_key(self) -> Path:
        return self.state_dir / "ssh_host_ed25519_key"

    @property
    def user_key(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.state_dir / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def sshd_config(self) -> Path:
        return self.state_dir / "sshd_config"

    @property
    def ssh_config(self) -> Path:
        """Private client config: pass with ``ssh -F`` / ``sshfs -F``."""
        return self.state_dir / "ssh_config"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "sshd.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "sshd.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # client side
    def ssh_argv(self, host: str = "127.0.0.1") -> list[str]:
        """Client argv up to and including the destination; append a command."""
        return ["ssh", "-F", str(self.ssh_config), host]

    def rsh_command(self) -> str:
        """One string for an ``--rsh`` option: ``ssh -F <private config>``."""
        return shlex.join(["ssh", "-F", str(self.ssh_config)])

    def run(self, host: str, command: str, timeout: float = 30.0,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``command`` (a remote shell string) on ``host``."""
        return subprocess.run(
            [*self.ssh_argv(host), command],
            capture_output=True, text=True, timeout=timeout, check=check,
            stdin=subprocess.DEVNULL,
        )

    # lifecycle
    def __enter__(self) -> SshServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def start(self) -> None:
        if self._proc is not None:
            raise InfraError("SshServer already started")
        sshd = _which("sshd")
        if sshd is None or _which("ssh") is None or _which("ssh-keygen") is None:
            raise InfraError("sshd/ssh/ssh-keygen not found (install openssh-server)")
        if self._given_state_dir is not None:
            self.state_dir = self._given_state_dir.absolute()
            self.state_dir.mkdir(parents=True, exist_ok=True)
        else:
            self.state_dir = Path(tempfile.mkdtemp(prefix="pbq-sshd-"))
            self._owns_state_dir = True
        try:
            self._prepare_keys()
            # Privilege-separation directory; sshd refuses to start without it.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
            self._start_sshd(os.path.abspath(sshd))
        except BaseException:
            self.stop()
            raise

    def _prepare_keys(self) -> None:
        for key, comment in ((self.host_key, "pbq-test-host"), (self.user_key, "pbq-test-user")):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(key)],
                check=True, capture_output=True, stdin=subprocess.DEVNULL,
            )
        shutil.copyfile(f"{self.user_key}.pub", self.authorized_keys)
        self.authorized_keys.chmod(0o600)
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"{HOST_KEY_ALIAS} {host_pub[0]} {host_pub[1]}\n")

    def _write_configs(self) -> None:
        d = self.state_dir
        self.sshd_config.write_text(
            f"""# private test sshd (pbq tests/sshinfra.py)
ListenAddress 127.0.0.1
Port {self.port}
HostKey {self.host_key}
PidFile {self.pid_file}
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
PermitRootLogin yes
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitUserRC no
PermitUserEnvironment no
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
AllowAgentForwarding no
MaxStartups 100:30:200
MaxSessions 100
LogLevel VERBOSE
Subsystem sftp internal-sftp
"""
        )
        hosts = " ".join(dict.fromkeys([*self.host_aliases, "127.0.0.1", "localhost"]))
        self.ssh_config.write_text(
            f"""# private test ssh client config (pbq tests/sshinfra.py); use with ssh -F
Host {hosts}
    HostName 127.0.0.1
    Port {self.port}
    User root
    IdentityFile {self.user_key}
    IdentitiesOnly yes
    IdentityAgent none
    BatchMode yes
    HostKeyAlias {HOST_KEY_ALIAS}
    UserKnownHostsFile {d / "known_hosts"}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    CheckHostIP no
    UpdateHostKeys no
    ConnectTimeout 10
    ServerAliveInterval 5
    ServerAliveCountMax 6
    ForwardAgent no
    ForwardX11 no
    LogLevel ERROR
"""
        )

    def _start_sshd(self, sshd: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = ""
        for _attempt in range(5):
            self.port = _free_port()
            self._write_configs()
            res = subprocess.run([sshd, "-t", "-f", str(self.sshd_config)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise InfraError(f"sshd -t rejected the config: {res.stderr.strip()}")
            self.log_file.write_bytes(b"")
            self._proc = subprocess.Popen(
                [sshd, "-D", "-f", str(self.sshd_config), "-E", str(self.log_file)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            self._ps = psutil.Process(self._proc.pid)
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    break
                if _port_open(self.port):
                    break
                time.sleep(0.02)
            if self._proc.poll() is None and _port_open(self.port):
                break
            last_error = _read_tail(self.log_file)
            self._kill_sshd()
            if "Address already in use" not in last_error or time.monotonic() >= deadline:
                raise InfraError(f"sshd did not start; log:\n{last_error}")
        else:
            raise InfraError(f"sshd did not start after 5 ports; log:\n{last_error}")
        # The port accepts connections; wait until a real login works.
        while True:
            try:
                res = subprocess.run(
                    [*self.ssh_argv("127.0.0.1"), "true"],
                    capture_output=True, text=True, timeout=10, check=False,
                    stdin=subprocess.DEVNULL,
                )
                if res.returncode == 0:
                    return
                last_error = res.stderr.strip()
            except subprocess.TimeoutExpired:
                last_error = "ssh true timed out"
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                raise InfraError(
                    f"ssh login to private sshd failed: {last_error}\nsshd log:\n"
                    f"{_read_tail(self.log_file)}"
                )
            time.sleep(0.05)

    def _kill_sshd(self) -> None:
        proc, ps = self._proc, self._ps
        self._proc = self._ps = None
        if proc is None or ps is None:
            return
        if proc.poll() is None:
            # Make sure the pid is still the sshd we started (pid file agrees,
            # command line names our config) before signalling anything.
            try:
                recorded = int(self.pid_file.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                recorded = proc.pid
            try:
                ours = recorded == proc.pid and str(self.sshd_config) in " ".join(ps.cmdline())
                children = ps.children(recursive=True) if ours else []
            except psutil.Error:
                ours, children = False, []
            if ours:
                # Per-connection sshd processes call setsid(), so they are not
                # in our process group; they are still the listener's children.
                _terminate_tree([ps, *children])
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)

    def stop(self) -> None:
        """Kill exactly the sshd started here (and its sessions); remove state."""
        try:
            self._kill_sshd()
        finally:
            if self._owns_state_dir and self.state_dir != Path():
                if any(m.startswith(str(self.state_dir) + "/") for m in mounted_paths()):
                    raise InfraError(f"refusing to remove {self.state_dir}: a mount is inside")
                shutil.rmtree(self.state_dir, ignore_errors=True)
                self._owns_state_dir = False


# --------------------------------------------------------------------------
# sshfs


def _fusermount() -> str:
    fm = _which("fusermount3") or _which("fusermount")
    if fm is None:
        raise InfraError("neither fusermount3 nor fusermount found (install fuse3)")
    return fm


class SshfsMount:
    """``sshfs host:remote_dir mountpoint`` through an :class:`SshServer`.

    ``options`` defaults to :data:`COHERENT_OPTIONS`; ``extra_options`` are
    appended (``"name=value"`` or flag strings).  :data:`SAFETY_OPTIONS` are
    always added.  The sshfs process runs in the foreground as our child, so
    we know exactly which process to stop; exit unmounts with ``fusermount3
    -u``, lazily (``-uz``) if busy, and never leaves a mount behind.
    """

    def __init__(
        self,
        server: SshServer,
        remote_dir: str | os.PathLike[str],
        mountpoint: str | os.PathLike[str],
        extra_options: Sequence[str] = (),
        *,
        host: str | None = None,
        options: Sequence[str] = COHERENT_OPTIONS,
        timeout: float = 20.0,
    ) -> None:
        self.server = server
        self.remote_dir = os.path.abspath(remote_dir)
        self.mountpoint = Path(os.path.abspath(mountpoint))
        self.host = host if host is not None else server.host_aliases[0]
        self.options: tuple[str, ...] = (*options, *extra_options, *SAFETY_OPTIONS)
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Path | None = None

    def argv(self) -> list[str]:
        return [
            "sshfs", "-f", "-F", str(self.server.ssh_config),
            f"{self.host}:{self.remote_dir}", str(self.mountpoint),
            "-o", ",".join(self.options),
        ]

    def __enter__(self) -> SshfsMount:
        self.mount()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.unmount()

    def mount(self) -> None:
        if self._proc is not None:
            raise InfraError("already mounted")
        if _which("sshfs") is None:
            raise InfraError("sshfs not found (install sshfs)")
        if is_mounted(self.mountpoint):
            raise InfraError(f"{self.mountpoint} is already a mount point")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        fd, log = tempfile.mkstemp(prefix="pbq-sshfs-", suffix=".log")
        self._log = Path(log)
        try:
            self._proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                start_new_session=True,
            )
        finally:
            os.close(fd)
        deadline = time.monotonic() + self.timeout
        while not is_mounted(self.mountpoint):
            if self._proc.poll() is not None or time.monotonic() >= deadline:
                err = _read_tail(self._log)
                self.unmount()
                raise InfraError(f"sshfs mount of {self.mountpoint} failed: {err}")
            time.sleep(0.02)
        os.stat(self.mountpoint)  # the mount answers

    @property
    def pid(self) -> int | None:
        """The sshfs process (foreground, our child) while mounted."""
        return self._proc.pid if self._proc is not None else None

    def unmount(self, busy_grace: float = 2.0) -> None:
        """Unmount; if busy, detach lazily and stop sshfs after ``busy_grace``
        seconds (files still open on the mount then fail with ENOTCONN)."""
        proc, self._proc = self._proc, None
        try:
            wait = 10.0
            if is_mounted(self.mountpoint):
                fm = _fusermount()
                res = subprocess.run([fm, "-u", str(self.mountpoint)],
                                     capture_output=True, text=True, check=False)
                if res.returncode != 0 and is_mounted(self.mountpoint):
                    # Busy (an open file, a cwd inside): detach lazily.  sshfs
                    # would live on until the last file is closed.
                    subprocess.run([fm, "-u", "-z", str(self.mountpoint)],
                                   capture_output=True, text=True, check=False)
                    wait = busy_grace
            if proc is not None:
                try:
                    proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    try:
                        ps = psutil.Process(proc.pid)
                        _terminate_tree([ps, *ps.children(recursive=True)])
                    except psutil.Error:
                        pass
                    proc.wait(timeout=10)
            if is_mounted(self.mountpoint):
                # Last resort: the kernel-level lazy unmount.
                subprocess.run(["umount", "-l", str(self.mountpoint)],
                               capture_output=True, check=False)
            if is_mounted(self.mountpoint):
                raise InfraError(f"could not unmount {self.mountpoint}")
        finally:
            if self._log is not None:
                with contextlib.suppress(OSError):
                    self._log.unlink()
                self._log = None


# --------------------------------------------------------------------------
# two views of one directory


class TwoMounts(NamedTuple):
    real_dir: Path
    mount_a: Path
    mount_b: Path


@contextlib.contextmanager
def shared_dir_two_mounts(
    base_dir: str | os.PathLike[str] | None = None,
    server: SshServer | None = None,
    extra_options: Sequence[str] = (),
    hosts: tuple[str, str] = DEFAULT_ALIASES,
) -> Iterator[TwoMounts]:
    """``(real_dir, mount_a, mount_b)``: one directory and two sshfs views of it.

    ``mount_a`` is mounted via host name ``hosts[0]``, ``mount_b`` via
    ``hosts[1]`` (both the private sshd).  Directories are created under
    ``base_dir`` (e.g. pytest's ``tmp_path``; a temporary directory that is
    removed afterwards if None).  Starts its own :class:`SshServer` unless one
    is passed.  Pytest use::

        @pytest.fixture
        def two_mounts(tmp_path):
            sshinfra.require_infra()
            with sshinfra.shared_dir_two_mounts(tmp_path) as m:
                yield m
    """
    with contextlib.ExitStack() as stack:
        if base_dir is None:
            base = Path(tempfile.mkdtemp(prefix="pbq-shared-"))
            # Registered first so it runs last, after the unmounts; refuses
            # (via mount check) to recurse into a live mount.
            stack.callback(_rmtree_unless_mounted, base)
        else:
            base = Path(os.path.abspath(base_dir))
        real, mnt_a, mnt_b = base / "shared", base / "mnt-a", base / "mnt-b"
        for d in (real, mnt_a, mnt_b):
            d.mkdir(parents=True, exist_ok=True)
        if server is None:
            server = stack.enter_context(SshServer(aliases=hosts))
        stack.enter_context(SshfsMount(server, real, mnt_a, extra_options, host=hosts[0]))
        stack.enter_context(SshfsMount(server, real, mnt_b, extra_options, host=hosts[1]))
        yield TwoMounts(real, mnt_a, mnt_b)


def _rmtree_unless_mounted(path: Path) -> None:
    prefix = str(path) + "/"
    if any(m == str(path) or m.startswith(prefix) for m in mounted_paths()):
        raise InfraError(f"refusing to remove {path}: a mount is inside")
    shutil.rmtree(path, ignore_errors=True)
