"""``python -m mssql_pool.testing``: the same as ``mssql-pool serve``."""

from __future__ import annotations

import sys

from .server import serve_main

if __name__ == "__main__":
    sys.exit(serve_main(sys.argv[1:]))
