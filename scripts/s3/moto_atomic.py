"""Runs moto_server with its S3 requests serialized, so conditional writes
are atomic.

moto 5.x checks `If-Match` / `If-None-Match` and then writes the object
without holding a lock: two racing conditional PUTs can both succeed. This
launcher wraps moto's per-request S3 entry points (object requests and
bucket requests) in one process-wide lock before starting the server, so
every check-then-write runs alone. The server is then linearizable, which is
what the S3 backend's compare-and-swap needs from a test store.

Usage: python moto_atomic.py [moto_server arguments, e.g. -H 127.0.0.1 -p PORT]
"""

import functools
import sys
import threading

from moto.s3.responses import S3Response
from moto.server import main as moto_server_main

REQUEST_LOCK = threading.RLock()


def serialized(method):
    @functools.wraps(method)
    def under_lock(*args, **kwargs):
        with REQUEST_LOCK:
            return method(*args, **kwargs)

    return under_lock


for name in ("key_response", "bucket_response"):
    original = getattr(S3Response, name, None)
    if original is None:
        sys.exit(f"moto_atomic: moto's S3Response has no {name}; this moto version is not supported")
    setattr(S3Response, name, serialized(original))

if __name__ == "__main__":
    moto_server_main(sys.argv[1:])
