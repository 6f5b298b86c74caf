"""The one exception type that reaches users as a single clear line."""


class RobustHubError(Exception):
    """A problem with the user's input (config, file, model id, data).

    Entry points catch it, print ``error: <message>`` on one line and exit non-zero;
    anything else escaping is a bug and keeps its traceback.
    """
