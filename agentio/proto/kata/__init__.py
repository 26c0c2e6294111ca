"""Generated: Kata agent API, Kata 2.x-4.x (ttrpc): kata-containers 3.29.0 protos.

Do not edit: regenerate with `make protos` (protos/generate.py).
"""
