"""The `cumem` console script: runs the C command built into the package
(cumem/bin/cumem) with the same arguments, as the cmake and ninja wheels do.
Its output, exit status and signals are the command's own (exec, no child)."""

import os
import sys


def command_path():
    """Where the build put the C `cumem` command."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", "cumem")


def main():
    """Replace this process with the C `cumem` command and sys.argv's
    arguments."""
    exe = command_path()
    if not os.access(exe, os.X_OK):
        sys.exit(f"cumem: the command is missing from this installation ({exe}); reinstall the package")
    os.execv(exe, [exe, *sys.argv[1:]])
