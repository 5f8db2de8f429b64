"""Memory of idle relayed sessions: give back the pages of a TLS read buffer.

Each TLS connection's SSL protocol (uvloop's, and asyncio's alike) owns a 256 KiB
read buffer for its whole life (uvloop: `SSL_READ_MAX_SIZE`, allocated when the
protocol is made; asyncio: `SSLProtocol.max_size`). Only the bytes of each read
land in it, and the bytes are copied out (into the incoming `ssl.MemoryBIO`)
before the read callback returns, so between reads its content is scratch. Yet
on a gateway it stays resident: glibc raises its mmap threshold once a large
block has been freed (the transient 256 KiB buffers of `SSLObject.read`), so the
buffers come from the heap, out of memory that earlier allocations had already
touched. Measured with 1,000-2,000 idle IDLE sessions through the gateway
(bench/scale.py; docs/benchmarks.md): 48.6 KiB of RSS per session, of which
about 17 KiB are pages of this buffer; 31.4 KiB once they are released.

`release_read_buffer` tells the kernel (madvise MADV_DONTNEED) that the pages
wholly inside the buffer may be dropped: they read as zeros when touched again,
which the next read overwrites anyway. OpenSSL's own record buffers need no help:
CPython sets SSL_MODE_RELEASE_BUFFERS on every SSLContext, so an idle connection
holds none.

Linux only (madvise through the C library); elsewhere it does nothing.
"""

from __future__ import annotations

import ctypes
import mmap
import sys
from typing import Any

__all__ = ["release_read_buffer"]

_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4  # <sys/mman.h> on Linux


def _madvise_function() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_madvise = _madvise_function()


def release_read_buffer(ssl_protocol: object) -> int:
    """Release the pages of `ssl_protocol`'s read buffer (the SSL protocol object
    under a TLS transport, as `loop.connect_accepted_socket` returns it or the plain
    transport carries it after `loop.start_tls`); how many bytes were released.

    Call it between reads, from the event loop (never from inside a read callback
    of that connection). Anything that is not such a protocol is left alone."""
    get_buffer = getattr(ssl_protocol, "get_buffer", None)
    if _madvise is None or get_buffer is None or not hasattr(ssl_protocol, "buffer_updated"):
        return 0
    try:
        # The protocol's own buffer, as it hands it to the transport for a read
        # (a size hint of 0 never makes it reallocate).
        view = get_buffer(0)
    except Exception:  # not the protocol we know: leave it alone
        return 0
    if not isinstance(view, memoryview):
        return 0
    # Not view.release(): asyncio hands out its own long-lived view of the buffer.
    if view.readonly or not view.c_contiguous or view.nbytes < 2 * _PAGE:
        return 0
    anchor = ctypes.c_char.from_buffer(view)
    address = ctypes.addressof(anchor)
    del anchor  # no export of the protocol's buffer may outlive this call
    # Only pages wholly inside the buffer: the partial pages at its ends may hold
    # the allocator's headers or other objects.
    start = (address + _PAGE - 1) & ~(_PAGE - 1)
    end = (address + view.nbytes) & ~(_PAGE - 1)
    if end <= start or _madvise(start, end - start, _MADV_DONTNEED) != 0:
        return 0
    return end - start
