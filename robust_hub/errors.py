"""The one exception type that reaches users as a single clear line."""

from typing import Callable


class RobustHubError(Exception):
    """A problem with the user's input (config, file, model id, data).

    Entry points catch it, print ``error: <message>`` on one line and exit non-zero;
    anything else escaping is a bug and keeps its traceback.
    """

    # Called by the entry point once the error is reported; set where other processes wait for that report.
    after_report: Callable[[], object] | None = None
