"""The jobs' own errors, each in one family of ``errors`` (which front doors read to report it).

Nothing here imports IPython.
"""

from __future__ import annotations

from .errors import ConflictError, JMKError, JMKUsageError, NotFoundError, UnavailableError

__all__ = ["ConflictError", "InvalidManifest", "JMKError", "JMKUsageError", "JobCancelled", "JobFailed",
           "JobNotFound", "NotFoundError", "UnavailableError", "UnknownPlugin"]


class InvalidManifest(JMKUsageError):
    """A Kubernetes manifest the API server would reject; ``problems`` lists every reason, each led by its path."""

    def __init__(self, subject: str, problems: list[str]) -> None:
        super().__init__(f"{subject} is invalid:\n" + "\n".join(f"  {problem}" for problem in problems))
        self.problems = problems


class JobNotFound(NotFoundError):
    """No job record with this id under the state directory."""

    def __init__(self, job_id: str, known: list[str] | None = None) -> None:
        hint = f" Recent jobs: {', '.join(known[:5])}." if known else ""
        super().__init__(f"No job {job_id!r}. Run %jobs (or `jmk jobs`) to list jobs.{hint}")
        self.job_id = job_id


class JobFailed(JMKError):
    """A job ended without success; carries the job id and the remote traceback."""

    def __init__(self, job_id: str, message: str, remote_traceback: str = "") -> None:
        text = f"Job {job_id} failed: {message}"
        if remote_traceback:
            text += f"\n\nRemote traceback (job {job_id}):\n{remote_traceback.rstrip()}"
        super().__init__(text)
        self.job_id = job_id
        self.message = message
        self.remote_traceback = remote_traceback


class JobCancelled(JobFailed):
    """A job was cancelled (by the user, an interrupt, or a timeout)."""


class UnknownPlugin(JMKUsageError, KeyError):
    """A backend, storage scheme or engine name that no registry knows."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(f"Unknown {kind} {name!r}; known: {', '.join(sorted(known)) or 'none'}.")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])
