"""Generated: Kata 1.x agent API (gRPC, direct or over yamux): kata-containers/agent.

Do not edit: regenerate with `make protos` (protos/generate.py).
"""
