"""Command line: ``python -m clatrous devices`` and ``python -m clatrous tune``."""

from __future__ import annotations

import argparse
import sys

from . import runtime


def _devices(_args) -> int:
    try:
        default = runtime.default_device()
    except runtime.DeviceNotFoundError as exc:
        default = None
        print(f"no default device: {exc}")
    found = runtime.list_devices()
    if not found:
        print("no OpenCL platform found")
        return 1
    for pi, di, _platform, device in found:
        info = runtime.device_info(device)
        mark = "*" if default is not None and device.int_ptr == default.int_ptr else " "
        print(
            f"{mark} {pi}:{di}  {info.platform} | {info.name} | {info.kind} | driver {info.driver} | "
            f"float64 {'yes' if info.fp64 else 'no'} | {info.compute_units} compute units | "
            f"max alloc {info.max_alloc // 2**20} MiB"
        )
    print("* = default (set CLATROUS_DEVICE to a name substring or 'platform:device' to change it)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m clatrous", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list OpenCL platforms and devices, and the default one")
    args = parser.parse_args(argv)
    return {"devices": _devices}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
