"""Simulator of the `tart` CLI for Linux test machines.

tart drives macOS VMs and runs only on macOS. This package reproduces the parts of its
command-line behaviour that the engine's Tart backend relies on, and runs each "VM"
as a bubblewrap sandbox with a real OpenSSH server on its own loopback address.
docs/backends/tart-simulator.md describes what it reproduces and its switches.
"""
