"""What ends a command and with which exit status: 0 every job succeeded; 1 a job failed (``JobFailed``, recorded
on the job, the batch goes on) or the server cannot be used (``ServerError``, ends the batch); 2 a bad command
line, workflow or override (``WorkflowError``, nothing submitted); 130 stopped with Ctrl-C."""

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class WorkflowError(ValueError):
    """The command line, the workflow file or an override cannot be used; nothing was submitted."""


class JobFailed(Exception):
    """A job ended without results: rejected by validation, failed in a node, interrupted, or lost too often."""


class ServerError(Exception):
    """The server cannot be used: unreachable for the whole retry window, silent past the timeout, or answering
    unlike ComfyUI. Ends the batch; the message is one line that names the server and what to do."""
