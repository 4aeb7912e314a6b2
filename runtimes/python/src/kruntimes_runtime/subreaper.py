"""Makes the calling process a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so
orphaned descendants are re-parented to it and can be reaped, not to PID 1."""

from __future__ import annotations

import ctypes
import os

PR_SET_CHILD_SUBREAPER = 36
PR_GET_CHILD_SUBREAPER = 37


class SubreaperError(OSError):
    """prctl failed."""


def _libc() -> ctypes.CDLL:
    # dlopen(NULL): libc is already mapped; find_library would spawn ldconfig.
    return ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    libc = _libc()
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SubreaperError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")


def is_subreaper() -> bool:
    libc = _libc()
    value = ctypes.c_int(0)
    if libc.prctl(PR_GET_CHILD_SUBREAPER, ctypes.byref(value), 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise SubreaperError(err, f"prctl(PR_GET_CHILD_SUBREAPER): {os.strerror(err)}")
    return value.value != 0
