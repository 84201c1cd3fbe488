"""NanoClaw compatibility: its container protocol, agent runtimes and group settings.

NanoClaw (github.com/qwibitai/nanoclaw, v1) starts its agent with `docker run -i`,
writes one JSON object to its stdin and reads results framed by marker lines on its
stdout. `protocol` models both sides of that exchange, `runtimes` builds the command
line of each agent CLI and parses its output, and `groups` loads a group's
`config.json` and checks its extra mounts against NanoClaw's mount allowlist.

`invocation`, `session` and `workspace` run one NanoClaw invocation through the
engine: they build its request, frame its results and copy the group folder
back. The other modules depend only on the standard library and pydantic, and
the engine core imports none of this package.
"""
