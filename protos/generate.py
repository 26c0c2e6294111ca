"""Tools: regenerate the committed betterproto2 code under agentio/proto/ from protos/.

Run from anywhere with the `protos` extra installed and the venv's bin directory on PATH
(the betterproto2 compiler shells out to `ruff`):

    PATH=.venv/bin:$PATH .venv/bin/python protos/generate.py [target ...]

Each target is one protoc run into its own package (`agentio/proto/<target>/`) with its own
message pool, so API generations whose messages share names (Kata 1.x and 2.x+ both use
package `grpc`) never collide. The output directory is deleted and rebuilt on every run;
the result depends only on the .proto files and the compiler version.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protos"
OUT_DIR = ROOT / "agentio" / "proto"
PLUGIN = "protoc-gen-python_betterproto2"


@dataclass(frozen=True)
class Target:
    """One generated package: its sources under protos/<name>/ and bundled imports."""

    name: str
    description: str
    # Well-known types the sources import: betterproto2 has no runtime copy of them,
    # so they are generated into the target package too.
    well_known: tuple[str, ...] = ("google/protobuf/empty.proto",)
    # grpclib client stubs (`<Service>Stub`); servers are not generated.
    plugin_options: str = "client_generation=async"


TARGETS: dict[str, Target] = {
    "kata": Target(
        name="kata",
        description="Kata agent API, Kata 2.x-4.x (ttrpc): kata-containers 3.29.0 protos.",
    ),
    "kata1": Target(
        name="kata1",
        description="Kata 1.x agent API (gRPC, direct or over yamux): kata-containers/agent.",
    ),
}


def _package_docstring(target: Target) -> str:
    return (
        f'"""Generated: {target.description}\n\n'
        "Do not edit: regenerate with `make protos` (protos/generate.py).\n"
        '"""\n'
    )


def _tool_env() -> dict[str, str]:
    """The environment for protoc: PATH made absolute, since protoc runs in a temp dir.

    Fails early with a clear message instead of a protoc plugin error.
    """
    path = os.pathsep.join(
        str(Path(entry).resolve())
        for entry in os.environ.get("PATH", "").split(os.pathsep)
        if entry
    )
    missing = [tool for tool in (PLUGIN, "ruff") if shutil.which(tool, path=path) is None]
    if missing:
        sys.exit(f"not on PATH: {', '.join(missing)} (install the `protos` extra, add .venv/bin)")
    return {**os.environ, "PATH": path}


def _well_known_include() -> Path:
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def _run_protoc(target: Target, dest: Path, env: dict[str, str]) -> None:
    src = PROTO_DIR / target.name
    sources = sorted(p.name for p in src.glob("*.proto"))
    if not sources:
        sys.exit(f"no .proto files in {src}")
    cmd = [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        f"-I{src}",
        f"-I{_well_known_include()}",
        f"--python_betterproto2_out={target.plugin_options}:{dest}",
        *sources,
        *target.well_known,
    ]
    # cwd=dest: the plugin decides which __init__.py files to emit by looking at its cwd.
    subprocess.run(cmd, cwd=dest, env=env, check=True)


def generate(target: Target, env: dict[str, str]) -> Path:
    """Regenerate agentio/proto/<target.name>/ from scratch and return its path."""
    out = OUT_DIR / target.name
    with tempfile.TemporaryDirectory(prefix=f"protos-{target.name}-") as tmp:
        build = Path(tmp) / target.name
        build.mkdir()
        _run_protoc(target, build, env)
        (build / "__init__.py").write_text(_package_docstring(target))
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(build, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Regenerate the named targets (default: all)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", help=f"any of {', '.join(sorted(TARGETS))}")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - TARGETS.keys()
    if unknown:
        parser.error(f"unknown target(s): {', '.join(sorted(unknown))}")
    env = _tool_env()
    for name in args.targets or sorted(TARGETS):
        out = generate(TARGETS[name], env)
        print(f"generated {out.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
