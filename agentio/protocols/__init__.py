"""Wire protocols spoken to agents: frames and calls (layer: protocols).

Layer: protocols. Imports :mod:`agentio.errors` and :mod:`agentio.transports` only. Each
protocol has a sans-I/O core (bytes in, events out) and a thin asyncio layer on top.
"""
