"""A real single-node SLURM cluster for the tests: munged, slurmctld and slurmd on this machine.

The SLURM job controller (``pydron.backend.launchers.slurm_jobs``) drives ``sbatch``, ``squeue``,
``scancel`` and ``srun``; what matters is how the real commands answer (their output
formats, their error messages, array limits, jobs leaving the queue), so the tests run
them against a real controller, not a mock. Everything lives in a private temporary
directory: the slurm.conf (written at run time, because ``SlurmctldHost`` and
``NodeName`` must be this machine's short hostname), state, spool, logs, and munged's
socket, so that a second test run on the same machine does not meet this one (free ports,
its own munge socket). Clients find the cluster through ``SLURM_CONF`` (see
:meth:`SlurmCluster.env`).

Nothing here depends on pytest: a failure raises :class:`realhosts.Unavailable` with a
reason a person can act on; ``conftest_slurm.py`` turns it into a skip (a failure under
``CI=true``).

Recipe: ``shared/notes/real-components.md`` section 2.
"""
from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from realhosts import Unavailable, _apt_install, free_port

MUNGED = "/usr/sbin/munged"
SLURMCTLD = "/usr/sbin/slurmctld"
SLURMD = "/usr/sbin/slurmd"
CLIENTS = ("sbatch", "squeue", "scancel", "scontrol", "srun", "salloc", "sinfo")

__all__ = ["SlurmCluster", "ensure_slurm"]


def ensure_slurm() -> None:
    """Install slurm-wlm and munge with apt if a daemon or a client is missing (needs root).

    ``.ci/run`` installs them before the tests; this is for a developer's machine (and a
    CI machine where that step was skipped)."""
    if _slurm_present():
        return
    if os.geteuid() != 0:
        raise Unavailable("slurm-wlm/munge are missing and installing them needs root")
    if shutil.which("apt-get") is None:
        raise Unavailable("slurm-wlm/munge are missing and there is no apt-get to install them")
    _apt_install("slurm-wlm", "munge")
    if not _slurm_present():
        raise Unavailable("slurm-wlm and munge were installed but a daemon or client is missing")


def _slurm_present() -> bool:
    daemons = all(os.path.exists(p) for p in (MUNGED, SLURMCTLD, SLURMD))
    return daemons and all(shutil.which(c) for c in CLIENTS)


_SLURM_CONF = """\
ClusterName=pydrontest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SrunPortRange={srun_ports}
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
KillWait=2
MinJobAge=2
MaxArraySize={max_array_size}
NodeName={host} CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """One single-node cluster: munged (own socket), slurmctld and slurmd, all in the
    foreground (``-D`` / ``-F``) so that we own their PIDs and can stop them.

    ``max_array_size`` is slurm.conf's ``MaxArraySize`` (task ids 0 .. N-1), small in a
    test of how arrays are split (``scontrol reconfigure``
    does not reliably apply a new one while jobs are queued: start another cluster).
    ``MinJobAge=2`` lets ended jobs leave the queue within about 10 s, as they soon do on a
    busy site, so that the tests meet jobs that squeue no longer lists.
    """

    max_array_size: int = 1001
    workdir: Path | None = None
    hostname: str = ""
    conf: Path | None = None
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    startup_seconds: float = 0.0

    # ------------------------------------------------------------------ start

    def start(self, timeout: float = 30.0) -> "SlurmCluster":
        """Install if needed, start the three daemons and wait until the node is idle."""
        if os.geteuid() != 0:
            raise Unavailable("a test SLURM cluster needs root (munged as munge, slurmd as root)")
        ensure_slurm()
        began = time.monotonic()
        self.hostname = socket.gethostname().split(".")[0]
        self.workdir = Path(tempfile.mkdtemp(prefix="pydron-slurm-"))
        try:
            self._start_munge()
            self._write_conf()
            self._spawn("slurmctld", [SLURMCTLD, "-D", "-f", str(self.conf)])
            self._spawn("slurmd", [SLURMD, "-D", "-f", str(self.conf)])
            self._wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began
        return self

    @property
    def munge_socket(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "munge" / "munge.socket"

    def _start_munge(self) -> None:
        """munged with every path in our directory (owned by munge, which it insists on),
        so that it neither needs /run/munge nor meets another run's munged."""
        assert self.workdir is not None
        munge_dir = self.workdir / "munge"
        munge_dir.mkdir()
        os.chmod(munge_dir, 0o755)  # munged wants its socket directory searchable by all
        try:
            user = pwd.getpwnam("munge")
        except KeyError:
            raise Unavailable("the munge package did not create the user `munge`") from None
        os.chown(munge_dir, user.pw_uid, user.pw_gid)
        os.chmod(self.workdir, 0o755)  # munge must reach its directory
        self._spawn("munged", [
            "runuser", "-u", "munge", "--", MUNGED, "-F", f"--socket={self.munge_socket}",
            f"--pid-file={munge_dir}/munged.pid", f"--log-file={munge_dir}/munged.log",
            f"--seed-file={munge_dir}/munged.seed"])
        self._wait(10, lambda: self.munge_socket.exists(), "munged made no socket")

    def _write_conf(self) -> None:
        assert self.workdir is not None
        slurm_dir = self.workdir / "slurm"
        (slurm_dir / "state").mkdir(parents=True)
        (slurm_dir / "spool").mkdir()
        srun_low = free_port()
        self.conf = slurm_dir / "slurm.conf"
        self.conf.write_text(_SLURM_CONF.format(
            host=self.hostname, munge_socket=self.munge_socket, ctld_port=free_port(),
            slurmd_port=free_port(), dir=slurm_dir, cpus=os.cpu_count() or 1,
            max_array_size=self.max_array_size,
            srun_ports=f"{min(srun_low, 60000)}-{min(srun_low, 60000) + 200}"))

    def _spawn(self, name: str, argv: list[str]) -> None:
        assert self.workdir is not None
        with open(self.workdir / f"{name}.out", "ab") as out:
            self.procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=out, env=self.env())

    def _wait_idle(self, timeout: float) -> None:
        def idle() -> bool:
            result = self.run(["sinfo", "-h", "-o", "%T"], check=False)
            return result.stdout.strip() == "idle"
        self._wait(timeout, idle, "the node did not become idle")

    def _wait(self, timeout: float, ready, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise Unavailable(f"{name} exited ({proc.returncode}): {self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise Unavailable(f"{what} within {timeout:.0f} s: {self.log_tail('slurmctld')}"
                                  f" / {self.log_tail('slurmd')}")
            time.sleep(0.05)

    # ------------------------------------------------------------------ use

    def env(self) -> dict[str, str]:
        """The environment for SLURM clients: ``SLURM_CONF`` names our slurm.conf, and no
        variable of an enclosing allocation leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        if self.conf is not None:
            env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, argv: list[str], check: bool = True, timeout: float = 30
            ) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster (in its directory, where an
        ``sbatch --wrap`` job without ``--output`` writes its ``slurm-N.out``)."""
        result = subprocess.run(argv, env=self.env(), capture_output=True, text=True,
                                timeout=timeout, cwd=self.workdir)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
        return result

    def queue(self) -> list[str]:
        """Every job id in the queue, one per array task."""
        out = self.run(["squeue", "-h", "-r", "-o", "%i"]).stdout
        return out.split()

    def wait_empty(self, timeout: float = 30.0) -> None:
        """Wait until no job is in the queue (cancelled or finished ones included)."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still queued after {timeout} s: {self.queue()}")
            time.sleep(0.2)

    def clear(self) -> None:
        """Cancel whatever a test left behind, and wait until the queue is empty."""
        if self.queue():
            self.run(["scancel", "--full", "--user", "root"], check=False)
            self.wait_empty()

    def log_tail(self, name: str, lines: int = 3) -> str:
        assert self.workdir is not None
        paths = {"slurmctld": self.workdir / "slurm" / "slurmctld.log",
                 "slurmd": self.workdir / "slurm" / "slurmd.log",
                 "munged": self.workdir / "munge" / "munged.log"}
        for path in (paths.get(name), self.workdir / f"{name}.out"):
            try:
                text = path.read_text(errors="replace").strip() if path else ""
            except OSError:
                continue
            if text:
                return " / ".join(text.splitlines()[-lines:])
        return "(no log)"

    # ------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop slurmd, slurmctld and munged (SIGTERM, then SIGKILL), by their own PIDs.
        Jobs still running were started by the tests; slurmd's SIGTERM ends them."""
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
