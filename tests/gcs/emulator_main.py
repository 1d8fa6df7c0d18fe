"""`python -m gcp_storage_emulator` with a listen backlog that absorbs TensorStore's bursts.

The emulator serves one request at a time from a listen queue of 5
(socketserver's default). Orbax's TensorStore opens up to 32 connections at
once; on a loaded 2-core machine the overflow turned into client timeouts and
retried conditional writes, which the emulator answers unlike GCS (it ignores
ifGenerationMatch). A deeper queue, with TensorStore's concurrency lowered in
`conftest.emulator_env`, keeps every request answered.
"""

import socketserver
import sys

socketserver.TCPServer.request_queue_size = 256

from gcp_storage_emulator import __main__ as emulator  # noqa: E402

if __name__ == "__main__":
  sys.exit(emulator.main(sys.argv[1:]))
