"""Command line: ``python -m clatrous devices`` and ``python -m clatrous tune``.

``tune`` takes one or more shapes as ``conv2d:key=value,...`` or
``conv1d:key=value,...`` with the keys n, h, w (for conv1d: the length), cin,
cout, k (or kh and kw), s (strides), d (dilation), padding and dtype, e.g.

    python -m clatrous tune conv2d:n=8,h=64,w=64,cin=64,cout=64,k=3,d=2,padding=same

and stores the fastest correct configuration for the present device in the
per-user tuning database, which later runs use.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__, params, runtime, tuner

_SHAPE_KEYS = {"n": 1, "h": 1, "w": 1, "cin": 1, "cout": 1, "k": 3, "kh": 0, "kw": 0, "s": 1, "d": 1, "g": 1}


def parse_shape(text: str) -> tuple[str, tuple, tuple, dict, str]:
    """``kind:key=value,...`` as (kind, x_shape, kernel_shape, geometry kwargs, dtype).

    Values are integers, except padding (a word) and dtype; nothing is evaluated.
    """
    kind, sep, spec = text.partition(":")
    if not sep or kind not in ("conv2d", "conv1d"):
        raise ValueError(f"a shape must look like conv2d:n=1,h=32,...; got {text!r}")
    values = dict(_SHAPE_KEYS)
    padding, dtype = "same", "float32"
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key == "padding":
            padding = value
        elif key == "dtype":
            dtype = value
        elif key in values:
            try:
                values[key] = int(value)
            except ValueError:
                raise ValueError(f"{key} must be an integer, got {value!r} in {text!r}") from None
        else:
            raise ValueError(f"unknown key {key!r} in {text!r}; known: {sorted(values)}, padding, dtype")
    kh = values["kh"] or values["k"]
    kw = values["kw"] or values["k"]
    groups = values["g"]
    if groups < 1 or values["cin"] % groups or values["cout"] % groups:
        raise ValueError(f"g (groups) must divide cin and cout, got g={groups} in {text!r}")
    geometry = dict(strides=values["s"], padding=padding, dilation_rate=values["d"], groups=groups)
    per_group = values["cin"] // groups  # g = cin: depthwise
    if kind == "conv1d":
        return (
            kind,
            (values["n"], values["w"], values["cin"]),
            (kw, per_group, values["cout"]),
            geometry,
            dtype,
        )
    x_shape = (values["n"], values["h"], values["w"], values["cin"])
    return kind, x_shape, (kh, kw, per_group, values["cout"]), geometry, dtype


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


def _bad_option(args) -> str | None:
    """Why an option of ``tune`` is out of range, or None."""
    if args.repeats < 1:
        return f"--repeats must be at least 1, got {args.repeats}"
    if args.top < 0:
        return f"--top must be 0 or more, got {args.top}"
    if not args.budget >= 0:  # also NaN
        return f"--budget must be 0 (no limit) or a positive number of seconds, got {args.budget:g}"
    return None


def _tune(args) -> int:
    problem = _bad_option(args)
    if problem:
        print(f"python -m clatrous tune: {problem}", file=sys.stderr)
        return 2
    info = runtime.get_runtime().info
    if args.show:
        entries, problem = params.inspect_database()
        print(f"{params.database_path()} for {info.key}:")
        if problem:
            print(f"  {problem}")
        entries = entries.get(info.key, {})
        print(json.dumps(entries, indent=1, sort_keys=True) if entries else "  (nothing tuned yet)")
        return 0
    if not args.shapes:
        print("give at least one shape, e.g. conv2d:n=1,h=64,w=64,cin=32,cout=32,k=3,d=2", file=sys.stderr)
        return 2
    status = 0
    for text in args.shapes:
        try:
            _kind, x_shape, kernel_shape, geometry, dtype = parse_shape(text)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
        print(f"tuning {text} on {info.name}")
        try:
            result = tuner.tune(
                x_shape,
                kernel_shape,
                dtype=dtype,
                repeats=args.repeats,
                budget_s=args.budget or None,
                progress=sys.stderr.isatty(),  # a bar redrawn with \r is noise in a log file
                **geometry,
            )
        except (ValueError, TypeError) as exc:
            print(f"  {text}: {exc}", file=sys.stderr)
            return 2
        for variant, config, seconds in result.timings[: args.top]:
            print(f"  {seconds * 1e3:9.3f} ms  {variant} {config}")
        for variant, config, reason in result.rejected:
            print(f"  rejected  {variant} {config}: {reason}")
        if result.untried:
            print(f"  {result.untried} configurations not tried: the {args.budget:g} s budget ran out")
        if result.store_error:
            print(f"  NOT stored: {result.store_error}", file=sys.stderr)
            print(f"  the winner for '{result.key}': {result.winner[0]} {json.dumps(result.winner[1])}")
            status = 1
        else:
            print(f"  stored {result.winner[0]} {result.winner[1]} for '{result.key}' in {result.path}")
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m clatrous", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"clatrous {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("devices", help="list OpenCL platforms and devices, and the default one")
    tune = sub.add_parser("tune", help="search kernel configurations for shapes on the present device")
    tune.add_argument("shapes", nargs="*", help="conv2d:key=value,... or conv1d:key=value,...")
    tune.add_argument("--repeats", type=int, default=5, help="timed runs per candidate (the fastest counts)")
    tune.add_argument("--top", type=int, default=5, help="how many of the fastest to print")
    tune.add_argument(
        "--budget", type=float, default=120.0, help="seconds per shape, at most (0: try every configuration)"
    )
    tune.add_argument("--show", action="store_true", help="print what is stored for the present device")
    args = parser.parse_args(argv)
    return {"devices": _devices, "tune": _tune}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
