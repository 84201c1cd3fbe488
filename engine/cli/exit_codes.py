"""Exit codes of the `engine` command.

`engine run` exits with the agent's own exit code when the run is done.
"""

EXIT_OK = 0
# A check failed: `engine audit verify` found a broken chain, or
# `engine trace --export` could not export.
EXIT_FAILURE = 1
EXIT_USAGE = 2
# The engine could not carry the run through. Chosen to match `docker run`,
# which exits 125 when Docker itself fails.
EXIT_RUN_FAILED = 125
EXIT_INTERRUPTED = 130
