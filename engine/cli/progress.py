"""Live progress of `engine run` on stderr, and the agent's output on stdout."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from engine.cli import render
from engine.observers import RunObserver
from engine.states import State

if TYPE_CHECKING:
    from rich.console import Console

    from engine.records import ExecutionRecord, TransitionRecord
    from engine.runner import Run


class ProgressObserver(RunObserver):
    """Prints a line per state on stderr and passes agent output through.

    Lines are coloured with Rich on a terminal and plain otherwise, so a run
    whose stderr is a pipe does not pay for importing Rich.
    """

    def __init__(self, *, show_output: bool, show_progress: bool):
        self.show_output = show_output
        self.show_progress = show_progress
        self._console: Console | None = None
        # Whether the agent's last output byte ended a line, so progress lines
        # never continue an unfinished output line on a shared terminal.
        self._at_line_start = True

    def on_transition(self, run: Run, row: TransitionRecord) -> None:
        if not self.show_progress:
            return
        spent = f" ({row.duration:.2f} s in {row.from_state})" if row.duration else ""
        colour = "red" if row.to_state == State.FAILED else "cyan"
        self._end_output_line()
        self._print((f"{row.at:%H:%M:%S}", "dim"), " ", (row.to_state, colour), spent)

    def on_output(self, run: Run, stream: str, data: bytes) -> None:
        if not self.show_output:
            return
        target = sys.stdout if stream == "stdout" else sys.stderr
        target.buffer.write(data)
        target.buffer.flush()
        if data:
            self._at_line_start = data.endswith(b"\n")

    def _end_output_line(self) -> None:
        if not self._at_line_start and sys.stdout.isatty() and sys.stderr.isatty():
            sys.stderr.write("\n")
        self._at_line_start = True

    def print_summary(self, record: ExecutionRecord) -> None:
        self._end_output_line()
        duration = ""
        if record.finished_at is not None:
            seconds = (record.finished_at - record.created_at).total_seconds()
            duration = f" in {seconds:.2f} s"
        if record.state is State.DONE:
            self._print(
                ("done", "green"),
                f"{duration}: exit code {record.exit_code}, execution {record.id}",
            )
            return
        self._print(
            ("failed", "red"),
            f" in {record.failed_state}{duration}: {record.error_type}: "
            f"{record.error_message} (execution {record.id}; "
            f"`engine show {record.id}` for details)",
        )

    def warn(self, message: str) -> None:
        self._print(("warning:", "yellow"), f" {message}")

    def _print(self, *parts: str | tuple[str, str]) -> None:
        """Print `parts` as one line; a (text, style) pair is styled on a terminal.

        The text is never read as Rich markup, so `[...]` in an error message
        is printed as it is.
        """
        if not sys.stderr.isatty():
            text = "".join(part if isinstance(part, str) else part[0] for part in parts)
            print(text, file=sys.stderr, flush=True)
            return
        from rich.text import Text

        if self._console is None:
            self._console = render.console(stderr=True)
        line = Text()
        for part in parts:
            if isinstance(part, str):
                line.append(part)
            else:
                line.append(part[0], style=part[1])
        self._console.print(line)
