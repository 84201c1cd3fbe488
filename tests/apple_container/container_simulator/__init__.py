"""A stand-in for Apple's `container` CLI that runs its containers on Docker.

See docs/backends/apple-container.md for what it reproduces and what it does not.
"""
