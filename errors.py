"""
The one exception the project's modules raise for what a user can fix: a bad setting, a missing or
damaged file. Its message is one line that names the problem and the fix. A script prints it as
"error: <message>" and exits with status 1 (configurator.configure installs that), with no
traceback; a notebook or a test that imports a module catches it like any ValueError.
"""
import sys


class Error(ValueError):
    """A problem with the user's input or files, said in one line that names the fix."""


def print_errors_as_one_line():
    """Let an uncaught Error end the script as `sys.exit("error: ...")` would, and Ctrl-C end it
    without a traceback (Python still exits as killed by SIGINT); anything else keeps its
    traceback."""
    default = sys.excepthook

    def hook(kind, value, traceback):
        if issubclass(kind, Error):
            print(f"error: {value}", file=sys.stderr)
        elif issubclass(kind, KeyboardInterrupt):  # Ctrl-C: the user stopped it on purpose
            print(file=sys.stderr)
        else:
            default(kind, value, traceback)
    sys.excepthook = hook
