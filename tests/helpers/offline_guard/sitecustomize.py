"""Loaded by every Python process whose PYTHONPATH holds this folder (tests/test_faults.py puts
it there for the stage subprocesses of `dvc repro`): with POLYALIGN_OFFLINE=1, creating an
internet socket (IPv4/IPv6) is logged to $POLYALIGN_SOCKET_LOG and raises. Unix sockets stay
allowed (multiprocessing, torch use them locally)."""

import os
import socket
import sys

if os.environ.get("POLYALIGN_OFFLINE") == "1":
    _Socket = socket.socket
    _BLOCKED = {socket.AF_INET, socket.AF_INET6}

    class _GuardedSocket(_Socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            fam = socket.AF_INET if family == -1 and fileno is None else family
            if fam in _BLOCKED:
                import traceback

                where = " <- ".join(f"{f.filename.split('site-packages/')[-1]}:{f.lineno}"
                                    for f in reversed(traceback.extract_stack()[:-1][-6:]))
                with open(os.environ.get("POLYALIGN_SOCKET_LOG", os.devnull), "a") as log:
                    log.write(f"{os.getpid()} {' '.join(sys.argv)[:200]} family={fam} at {where}\n")
                raise OSError("POLYALIGN_OFFLINE=1: internet sockets are forbidden in this process")
            super().__init__(family, type, proto, fileno)

    _getaddrinfo = socket.getaddrinfo

    def _guarded_getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):  # a name lookup is a network call
            with open(os.environ.get("POLYALIGN_SOCKET_LOG", os.devnull), "a") as log:
                log.write(f"{os.getpid()} {' '.join(sys.argv)[:200]} getaddrinfo={host}\n")
            raise OSError("POLYALIGN_OFFLINE=1: name lookups are forbidden in this process")
        return _getaddrinfo(host, *args, **kwargs)

    socket.socket = _GuardedSocket
    socket.getaddrinfo = _guarded_getaddrinfo
