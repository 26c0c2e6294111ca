"""A local agent: a real Kata agent protocol server that runs processes on the host.

Layer: local agent (may import errors, transports, protocols, generated).

``processes`` is the host-process engine (pulled stdio, signals, ptys) and ``containers`` the
sandbox/container bookkeeping a real agent keeps; the ttrpc service that maps RPCs onto them
lives beside them.
"""
