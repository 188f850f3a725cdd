"""Exception types.

User mistakes are plain ``ValueError`` / ``TypeError`` raised before any
OpenCL call; the classes here are for what the device and driver decide.
Each subclasses the built-in a caller would already catch.
"""

from __future__ import annotations

__all__ = [
    "BuildError",
    "ClatrousError",
    "DeviceMemoryError",
    "DeviceNotFoundError",
    "UnsupportedDeviceError",
]


class ClatrousError(Exception):
    """Base class of clatrous's own errors."""


class DeviceNotFoundError(ClatrousError, LookupError):
    """No OpenCL device matches the request (``device=`` or ``CLATROUS_DEVICE``)."""


class UnsupportedDeviceError(ClatrousError, TypeError):
    """The device lacks a capability the call needs (float64 without ``cl_khr_fp64``)."""


class DeviceMemoryError(ClatrousError, MemoryError):
    """A problem too large for the device even after splitting it."""


class BuildError(ClatrousError, RuntimeError):
    """A kernel failed to build; carries the compiler log, the options and the source."""

    def __init__(self, message: str, *, log: str, options: tuple[str, ...], source_path: str):
        super().__init__(message)
        self.log = log
        self.options = options
        self.source_path = source_path
