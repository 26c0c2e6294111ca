"""Benchmark harness for agentio (layer: tools): ``python -m bench`` / ``make bench``.

Layer: tools. Measures the library from the outside, through the public API and the ttrpc
client, against the local agent running in a child process, with an in-run baseline (a
minimal framed echo over a unix socket) so figures can be read relative to this machine.
"""
