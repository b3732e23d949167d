"""The Grid Engine pool (``"type": "sge"``): workers in Grid Engine array jobs.

The worker engine (:mod:`pydron.backend.engine.engine`) with the batch launcher
(:mod:`pydron.backend.launchers.batch`: jobs only while work is queued, replaced when
lost, cancelled at the end) over the Grid Engine job controller
(:mod:`pydron.backend.launchers.sge_jobs`: ``qsub -t``, one ``qstat`` per poll, ``qdel``).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydron.backend.engine.engine import WorkerEngine
from pydron.backend.launchers.batch import BatchLauncher, with_caller_path
from pydron.backend.launchers.sge_jobs import SgeJobs, SgeSettings

__all__ = ["SgePool"]


class SgePool(WorkerEngine):
    """Workers in the Grid Engine jobs a ``{"type": "sge"}`` entry describes (a mapping,
    as in pydron.conf, or :class:`SgeSettings`); ``environ`` is the environment of the
    Grid Engine commands (default: this process's). Jobs get Grid Engine's own
    environment (qsub without ``-V``), and the job script exports the caller's
    ``sys.path`` as ``PYTHONPATH`` before the entry's ``setup``. Its parallelism is
    ``jobs * cores``; other keyword arguments are the engine's."""

    def __init__(self, entry: Mapping[str, Any] | SgeSettings, *,
                 environ: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        settings = entry if isinstance(entry, SgeSettings) else SgeSettings.from_entry(entry)
        self.settings = settings = with_caller_path(settings)

        def make_jobs(command: list[str], secret: bytes) -> SgeJobs:
            return SgeJobs(settings, command, secret, environ=environ)
        self.launcher = BatchLauncher(settings, make_jobs, "SGE")
        super().__init__(self.launcher, **kwargs)

    def jobs(self) -> list[dict[str, object]]:
        """Each Grid Engine job of the run: ``id``, ``state``, ``reason``, ``workers``,
        ``log``."""
        return self.launcher.job_list()
