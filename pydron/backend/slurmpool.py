"""The SLURM pool (``"type": "slurm"``): workers in SLURM batch jobs, or ``srun`` steps.

The worker engine (:mod:`pydron.backend.engine.engine`) with the batch launcher
(:mod:`pydron.backend.launchers.batch`: jobs only while work is queued, replaced when
lost, cancelled at the end) over the SLURM job controller
(:mod:`pydron.backend.launchers.slurm_jobs`: ``sbatch --array``, one ``squeue`` per
poll, ``scancel``; ``srun`` inside an allocation).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydron.backend.engine.engine import WorkerEngine
from pydron.backend.launchers.batch import BatchLauncher, with_caller_path
from pydron.backend.launchers.slurm_jobs import SlurmJobs, SlurmSettings

__all__ = ["SlurmPool"]


class SlurmPool(WorkerEngine):
    """Workers in the SLURM jobs a ``{"type": "slurm"}`` entry describes (a mapping, as
    in pydron.conf, or :class:`SlurmSettings`); ``environ`` is the environment of the
    SLURM commands (default: this process's), which the jobs inherit; the job script
    exports the caller's ``sys.path`` as ``PYTHONPATH`` before the entry's ``setup``
    (:func:`~pydron.backend.launchers.batch.with_caller_path`). Its parallelism is
    ``jobs * cores``; other keyword arguments are the engine's (as
    :class:`~pydron.backend.multicore.MulticorePool`'s)."""

    def __init__(self, entry: Mapping[str, Any] | SlurmSettings, *,
                 environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        settings = entry if isinstance(entry, SlurmSettings) else \
            SlurmSettings.from_entry(entry)
        self.settings = settings = with_caller_path(settings)

        def make_jobs(command: list[str], secret: bytes) -> SlurmJobs:
            return SlurmJobs(settings, command, secret, poll_interval=settings.poll_interval,
                             environ=environ)
        self.launcher = BatchLauncher(settings, make_jobs, "SLURM")
        super().__init__(self.launcher, **kwargs)

    def jobs(self) -> list[dict[str, object]]:
        """Each SLURM job of the run: ``id``, ``state``, ``reason``, ``workers``, ``log``."""
        return self.launcher.job_list()
