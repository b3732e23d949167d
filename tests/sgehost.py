"""A real single-host Grid Engine for the tests: sge_qmaster and sge_execd on this machine.

The Grid Engine job controller (``pydron.backend.launchers.sge_jobs``) drives ``qsub``,
``qstat``, ``qdel``, ``qconf`` and ``qacct``; what matters is how the real commands answer
(``-terse`` array ids, qstat's XML and folded task ranges, the error state ``Eqw``,
``max_aj_tasks``, jobs leaving the queue), so the tests run them against a real Son of
Grid Engine 8.1.9 (Debian's ``gridengine-*`` packages), not a mock.

Nothing is shared with a system-wide installation or another test run: each
:class:`SgeCluster` is a private *SGE_ROOT* in a temporary directory (symlinks to the
installed ``bin``, ``lib``, ``util`` and ``utilbin``, and its own cell ``default``: a
bootstrap file, a Berkeley DB spool, qmaster and execd spool directories), reached on two
free ports (``SGE_QMASTER_PORT``, ``SGE_EXECD_PORT``), so it coexists with the SLURM test
cluster and with a second cluster started in the same machine's lifetime. Clients find it
through :meth:`SgeCluster.env` (``SGE_ROOT``, ``SGE_CELL`` and the two ports; Debian's
client wrappers in /usr/bin honour them).

What it took (none of it is in Debian's postinst, which configures one system cell):

* ``host_aliases``: Debian maps the host name to 127.0.0.1, which resolves back to
  ``localhost``; Grid Engine then refuses every client ("access denied (client IP
  resolved to host name "localhost". This is not identical to clients host name "vm")").
  The alias file makes all those names one host.
* ``min_uid 0``/``min_gid 0``: the tests run as root, and Grid Engine by default runs
  no job of a uid under 1000.
* ``login_shells none``: by default Grid Engine starts a ``-S /bin/bash`` job as a login
  shell, which reads root's profile; on a machine where that runs ``pyenv init`` (a
  ``pyenv rehash`` under a lock), a job killed there leaves the lock and the next jobs
  hang in it. A site's profile is the site's business; the tests want the job script.
* a fast scheduler (``schedule_interval 0:0:1``, ``flush_submit_sec``/``flush_finish_sec``
  1) and accounting flushed every second, so that jobs start and are accounted for in
  about a second, as the tests' deadlines expect.
* the daemons run in the foreground (``SGE_ND=1``), so that we own their PIDs.

Nothing here depends on pytest: a failure raises :class:`realhosts.Unavailable` with a
reason a person can act on; ``conftest_sge.py`` turns it into a skip (a failure under
``CI=true``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydron.backend.launchers.sge_jobs import task_ids
from realhosts import Unavailable, _apt_install, free_port

SYSTEM_ROOT = Path("/var/lib/gridengine")
LIBEXEC = Path("/usr/lib/gridengine")
QMASTER = Path("/usr/sbin/sge_qmaster")
EXECD = Path("/usr/sbin/sge_execd")
RESOURCES = Path("/usr/share/gridengine/util/resources")
DEFAULT_CONFIGURATION = Path("/usr/share/gridengine/default-configuration")
CLIENTS = ("qsub", "qstat", "qdel", "qconf", "qacct")
PACKAGES = ("gridengine-master", "gridengine-exec", "gridengine-client")
QUEUE = "pydron.q"
PE = "smp"

__all__ = ["SgeCluster", "ensure_sge", "PACKAGES", "QUEUE", "PE"]


# --------------------------------------------------------------------------- install


def ensure_sge() -> None:
    """Install Debian's gridengine packages with apt if a daemon or client is missing (needs
    root). Only the programs are wanted: debconf is told not to configure a system cell
    (``shared/gridengineconfig false``), and a temporary ``policy-rc.d`` keeps the
    packages' postinst from starting system daemons (which, without a cell, would fail
    and fail the install) where the machine has none (Debian's container images do)."""
    if _sge_present():
        return
    if os.geteuid() != 0:
        raise Unavailable("gridengine is missing and installing it needs root")
    if shutil.which("apt-get") is None or shutil.which("debconf-set-selections") is None:
        raise Unavailable("gridengine is missing and there is no apt-get to install it")
    answers = "".join(f"{package} shared/gridengineconfig boolean false\n"
                      for package in ("gridengine-common", "gridengine-client",
                                      "gridengine-master"))
    subprocess.run(["debconf-set-selections"], input=answers, text=True, capture_output=True)
    policy = Path("/usr/sbin/policy-rc.d")
    added = not policy.exists()
    if added:
        policy.write_text("#!/bin/sh\n# pydron tests: no daemons while installing\nexit 101\n")
        policy.chmod(0o755)
    try:
        _apt_install(*PACKAGES)
    finally:
        if added:
            policy.unlink(missing_ok=True)
    if not _sge_present():
        raise Unavailable(f"{' '.join(PACKAGES)} were installed but a daemon or client is "
                          "missing")


def _sge_present() -> bool:
    files = (QMASTER, EXECD, LIBEXEC / "spoolinit", LIBEXEC / "spooldefaults",
             DEFAULT_CONFIGURATION)
    return all(p.exists() for p in files) and all(shutil.which(c) for c in CLIENTS)


# --------------------------------------------------------------------------- files

_BOOTSTRAP = """\
admin_user              root
default_domain          none
ignore_fqdn             true
spooling_method         berkeleydb
spooling_lib            libspoolb
spooling_params         {dir}/spooldb
binary_path             /usr/sbin
qmaster_spool_dir       {dir}/spool/qmaster
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""

_CONFIG_CHANGES = {  # the global configuration: Debian's default, with these values
    "execd_spool_dir": "{dir}/spool/execd",
    "mailer": "/bin/true",
    "min_uid": "0",
    "min_gid": "0",
    "login_shells": "none",
    "load_report_time": "00:00:05",
    "reporting_params": "accounting=true reporting=false flush_time=00:00:01 joblog=false "
                        "sharelog=00:00:00",
    "max_aj_tasks": "{max_aj_tasks}",
}

_SCHEDULER_CHANGES = {
    "schedule_interval": "0:0:1",
    "flush_submit_sec": "1",
    "flush_finish_sec": "1",
    "job_load_adjustments": "NONE",
    "load_adjustment_decay_time": "0:0:0",
}

_EXEC_HOST = """\
hostname {host}
load_scaling NONE
complex_values NONE
user_lists NONE
xuser_lists NONE
projects NONE
xprojects NONE
usage_scaling NONE
report_variables NONE
"""


def _replace(text: str, changes: dict[str, str]) -> str:
    """``text`` (``name value`` lines) with the named values replaced."""
    out = []
    for line in text.splitlines():
        name = line.split(None, 1)[0] if line.strip() else ""
        out.append(f"{name} {changes[name]}" if name in changes else line)
    return "\n".join(out) + "\n"


def _host_names(host: str) -> list[str]:
    """Every other name this host's addresses resolve back to (``localhost``, a fully
    qualified name ...): Grid Engine must see them all as ``host``."""
    names = {"localhost", socket.getfqdn()}
    for address in {"127.0.0.1", _address_of(host)}:
        try:
            name, aliases, _ = socket.gethostbyaddr(address)
        except OSError:
            continue
        names.update([name, *aliases])
    names.discard(host)
    return sorted(n for n in names if n)


def _address_of(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return "127.0.0.1"


# --------------------------------------------------------------------------- cluster


@dataclass
class SgeCluster:
    """One single-host cluster: sge_qmaster and sge_execd in the foreground, a queue
    :data:`QUEUE` with ``slots`` (default: the CPUs) on this host, a parallel environment
    :data:`PE` (``$pe_slots``) in it.

    ``max_aj_tasks`` is the global configuration's most tasks per array (small in a test
    of how arrays are split).
    """

    max_aj_tasks: int = 75000
    slots: int = 0
    workdir: Path | None = None
    hostname: str = ""
    qmaster_port: int = 0
    execd_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_seconds: float = 0.0

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 30.0) -> "SgeCluster":
        """Install if needed, create the cell, start both daemons, add the host, the PE and
        the queue, and wait until the queue instance takes jobs."""
        if os.geteuid() != 0:
            raise Unavailable("a test Grid Engine needs root (sge_execd runs jobs as their "
                              "owner)")
        ensure_sge()
        began = time.monotonic()
        self.hostname = socket.gethostname().split(".")[0]
        self.slots = self.slots or os.cpu_count() or 1
        self.workdir = Path(tempfile.mkdtemp(prefix="pydron-sge-"))
        os.chmod(self.workdir, 0o755)
        self.qmaster_port, self.execd_port = free_port(), free_port()
        try:
            self._make_cell()
            self._spawn("qmaster", [str(QMASTER)])
            self._wait(timeout, lambda: self.run(["qconf", "-sh"], check=False).returncode
                       == 0, "sge_qmaster did not answer")
            self._configure()
            self._spawn("execd", [str(EXECD)])
            self._wait(timeout, self._queue_ready, "the queue instance did not come up")
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def root(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "root"

    def _make_cell(self) -> None:
        """SGE_ROOT (links to the installed programs), the cell's common files, and the
        spool initialized as Debian's init_cluster does, with our configuration."""
        assert self.workdir is not None
        common = self.root / "default" / "common"
        common.mkdir(parents=True)
        for name in ("bin", "lib", "util", "utilbin"):
            (self.root / name).symlink_to(SYSTEM_ROOT / name)
        for name in ("spooldb", "spool/qmaster", "spool/execd"):
            (self.workdir / name).mkdir(parents=True)
        (common / "bootstrap").write_text(_BOOTSTRAP.format(dir=self.workdir))
        (common / "act_qmaster").write_text(self.hostname + "\n")
        aliases = _host_names(self.hostname)
        if aliases:
            (common / "host_aliases").write_text(" ".join([self.hostname, *aliases]) + "\n")
        config = self.workdir / "global.conf"
        changes = {k: v.format(dir=self.workdir, max_aj_tasks=self.max_aj_tasks)
                   for k, v in _CONFIG_CHANGES.items()}
        config.write_text(_replace(DEFAULT_CONFIGURATION.read_text(), changes))
        self._setup_step([str(LIBEXEC / "spoolinit"), "berkeleydb", "libspoolb",
                          str(self.workdir / "spooldb"), "init"])
        self._setup_step([str(LIBEXEC / "spooldefaults"), "configuration", str(config)])
        self._setup_step([str(LIBEXEC / "spooldefaults"), "complexes",
                          str(RESOURCES / "centry")])
        self._setup_step([str(LIBEXEC / "spooldefaults"), "usersets",
                          str(RESOURCES / "usersets")])
        self._setup_step([str(LIBEXEC / "spooldefaults"), "managers", "root"])

    def _configure(self) -> None:
        """The scheduler's speed, this host as submit and execution host, the PE, the
        queue (all through qconf's file options: no editor)."""
        assert self.workdir is not None
        scheduler = self._file("sched", _replace(self.run(["qconf", "-ssconf"]).stdout,
                                                 _SCHEDULER_CHANGES))
        self.run(["qconf", "-Msconf", scheduler])
        self.run(["qconf", "-as", self.hostname])
        self.run(["qconf", "-Ae", self._file("exechost", _EXEC_HOST.format(
            host=self.hostname))])
        pe = "".join(line + "\n" for line in (RESOURCES / "pe" / "smp").read_text()
                     .splitlines() if not line.startswith("#"))
        self.run(["qconf", "-Ap", self._file("pe", pe)])
        queue = _replace(self.run(["qconf", "-sq"]).stdout, {  # the template
            "qname": QUEUE, "hostlist": self.hostname, "slots": str(self.slots),
            "load_thresholds": "NONE", "pe_list": PE})
        self.run(["qconf", "-Aq", self._file("queue", queue)])

    def _file(self, name: str, text: str) -> str:
        assert self.workdir is not None
        path = self.workdir / name
        path.write_text(text)
        return str(path)

    def _setup_step(self, argv: list[str]) -> None:
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                timeout=60, cwd=self.workdir)
        if result.returncode != 0:
            raise Unavailable(f"`{' '.join(argv)}` failed: "
                              f"{(result.stderr or result.stdout).strip()}")

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.workdir is not None
        env = dict(self.env(), SGE_ND="1")  # stay in the foreground
        with open(self.workdir / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=out, env=env, cwd=self.workdir,
                                                start_new_session=True)

    def _queue_ready(self) -> bool:
        """The queue instance exists and has no state letters (``u``: execd unheard of)."""
        result = self.run(["qstat", "-f", "-q", QUEUE], check=False)
        for line in result.stdout.splitlines():
            if line.startswith(f"{QUEUE}@"):
                return len(line.split()) == 5  # name, type, slots, load, arch: no states
        return False

    def _wait(self, timeout: float, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise Unavailable(f"sge_{name} exited ({proc.returncode}): "
                                      f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{what} within {timeout:.0f} s: {self.log_tail('qmaster')}"
                                  f" / {self.log_tail('execd')}")
            time.sleep(0.1)

    # ------------------------------------------------------------------ use

    def env(self) -> dict[str, str]:
        """The environment for Grid Engine clients: our SGE_ROOT, cell and ports, and no
        variable of an enclosing Grid Engine job leaking in."""
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("SGE_") and k not in ("JOB_ID", "SGE_TASK_ID")}
        env.update(SGE_ROOT=str(self.root), SGE_CELL="default",
                   SGE_QMASTER_PORT=str(self.qmaster_port),
                   SGE_EXECD_PORT=str(self.execd_port))
        return env

    def run(self, argv: list[str], check: bool = True, timeout: float = 30
            ) -> subprocess.CompletedProcess:
        """Run a Grid Engine client command against this cluster (in its directory)."""
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                timeout=timeout, cwd=self.workdir)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {(result.stderr or result.stdout).strip()}")
        return result

    def queue(self) -> list[str]:
        """Every job in the queue as ``job.task`` (pending ranges expanded), any user."""
        root = ElementTree.fromstring(self.run(["qstat", "-xml", "-u", "*"]).stdout)
        found = []
        for entry in root.iter("job_list"):
            number = (entry.findtext("JB_job_number") or "").strip()
            found.extend(f"{number}.{task}" for task in task_ids(entry.findtext("tasks")))
        return found

    def wait_empty(self, timeout: float = 30.0) -> None:
        """Wait until no job is in the queue (being deleted ones included)."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still queued after {timeout} s: {self.queue()}")
            time.sleep(0.2)

    def clear(self) -> None:
        """Delete whatever a test left behind (forced), and wait until the queue is empty."""
        if self.queue():
            self.run(["qdel", "-f", "-u", "*"], check=False)
            self.wait_empty()

    def log_tail(self, name: str, lines: int = 3) -> str:
        assert self.workdir is not None
        paths = [self.workdir / "spool" / "qmaster" / "messages"] if name == "qmaster" else \
            list((self.workdir / "spool" / "execd").glob("*/messages"))
        for path in [*paths, self.workdir / f"{name}.out"]:
            try:
                text = path.read_text(errors="replace").strip()
            except OSError:
                continue
            if text:
                return " / ".join(text.splitlines()[-lines:])
        return "(no log)"

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop sge_execd and sge_qmaster by their own PIDs (SIGTERM, then SIGKILL: the
        cell is thrown away, so a controlled shutdown need not finish), end what is left
        of the jobs' process groups, and remove the cell."""
        jobs = self._job_groups()
        for name in ("execd", "qmaster"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for group in jobs:
            try:
                os.killpg(group, signal.SIGKILL)
            except OSError:
                pass
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def _job_groups(self) -> set[int]:
        """The process groups of execd's shepherds' children (the jobs), found through
        /proc before execd goes."""
        execd = self.procs.get("execd")
        if execd is None or execd.poll() is not None:
            return set()
        parents: dict[int, int] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        below = {execd.pid}
        changed = True
        while changed:
            changed = False
            for pid, parent in parents.items():
                if parent in below and pid not in below:
                    below.add(pid)
                    changed = True
        below.discard(execd.pid)
        groups = set()
        for pid in below:
            try:
                groups.add(os.getpgid(pid))
            except OSError:
                pass
        groups.discard(os.getpgid(execd.pid))
        return groups
