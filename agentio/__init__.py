"""agentio: drive the agents inside lightweight VMs (Kata Containers, hyperstart) from asyncio."""

__version__ = "0.1.0"
