"""`python -m gcp_storage_emulator`, patched to answer generations as GCS does.

Run it as the emulator itself: `python tests/gcs/emulator_main.py start
--host=127.0.0.1 --port=9023 --in-memory --default-bucket=b`. It stays a real
HTTP server (the emulator's own); only four of its object handlers are
wrapped, each to restore one GCS behaviour that TensorStore (Orbax's array
storage, OCDBT on by default) relies on:

1. Media downloads carry `x-goog-generation` and `x-goog-metageneration`
   (https://cloud.google.com/storage/docs/xml-api/reference-headers#xgooggeneration;
   the JSON API's `alt=media` answers carry them too). TensorStore takes an
   object's generation from that header on every data read
   (tensorstore/kvstore/gcs_http/object_metadata.cc, SetObjectMetadataFromHeaders),
   reading 0 when it is missing. Generation 0 is not a valid GCS generation:
   the next conditional write of the OCDBT manifest (`ifGenerationMatch=<it>`)
   fails in the client with "Malformed StorageGeneration". The plain emulator
   sends no such header, so the second commit to any OCDBT database failed.
2. `ifGenerationMatch` / `ifGenerationNotMatch` on object GETs, uploads and
   deletes are honoured (https://cloud.google.com/storage/docs/request-preconditions):
   a failed precondition is `412 Precondition Failed`, except a GET whose
   `ifGenerationNotMatch` names the live generation, which is
   `304 Not Modified`; `ifGenerationMatch=0` means "no live object". The plain
   emulator ignores both, so a conditional manifest write could overwrite a
   newer manifest, and a cached read was always sent again in full.

Also: the listen queue is 256 deep (socketserver's default is 5). The
emulator serves one request at a time; TensorStore opens several connections
at once, and on a loaded 2-core machine an overflowing queue turned into
client timeouts (`conftest.emulator_env` also lowers TensorStore's request
concurrency to 4). One request at a time also makes each precondition check
and the write it guards atomic, as on GCS.
"""

import functools
import socketserver
import sys
from http import HTTPStatus

from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

socketserver.TCPServer.request_queue_size = 256


def _live_generation(storage, bucket: str, name: str) -> int | None:
  try:
    return int(storage.get_file_obj(bucket, name)["generation"])
  except NotFound:
    return None


def _query_int(request, key: str) -> int | None:
  values = request.query.get(key)
  return int(values[0]) if values else None


def _failed(response, status: HTTPStatus, what: str) -> None:
  response.status = status
  if status == HTTPStatus.PRECONDITION_FAILED:  # GCS's JSON error body
    response.json({"error": {"code": 412, "message": f"{what} condition not met",
                             "errors": [{"domain": "global", "reason": "conditionNotMet",
                                         "message": f"{what} condition not met"}]}})


def _precondition(request, storage, name: str, on_read: bool) -> tuple | None:
  """(status, name of the condition) when a generation precondition fails, else None."""
  live = _live_generation(storage, request.params["bucket_name"], name)
  match = _query_int(request, "ifGenerationMatch")
  if match is not None:
    if match == 0 and live is not None:
      return HTTPStatus.PRECONDITION_FAILED, "ifGenerationMatch"
    if match != 0 and live is not None and live != match:
      return HTTPStatus.PRECONDITION_FAILED, "ifGenerationMatch"
    if match != 0 and live is None and not on_read:  # a read of nothing stays a 404
      return HTTPStatus.PRECONDITION_FAILED, "ifGenerationMatch"
  not_match = _query_int(request, "ifGenerationNotMatch")
  if not_match is not None and live is not None and live == not_match:
    return (HTTPStatus.NOT_MODIFIED if on_read else HTTPStatus.PRECONDITION_FAILED,
            "ifGenerationNotMatch")
  return None


def _guard_read(handler):
  """objects.get / objects.download: preconditions first; generation headers on data."""

  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    failed = _precondition(request, storage, request.params["object_id"], on_read=True)
    if failed:
      return _failed(response, *failed)
    handler(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
      try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      except NotFound:
        return
      response["x-goog-generation"] = str(obj["generation"])
      response["x-goog-metageneration"] = str(obj["metageneration"])

  return wrapped


def _guard_upload(handler):
  """objects.insert: an upload (or a resumable session's start) checks its preconditions."""

  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    name = request.query.get("name", [None])[0]
    if name is None and request.query.get("uploadType") == ["multipart"]:
      name = request.data["meta"].get("name")  # the name in the metadata part
    if name is not None and "upload_id" not in request.query:
      failed = _precondition(request, storage, name, on_read=False)
      if failed:
        return _failed(response, *failed)
    return handler(request, response, storage, *args, **kwargs)

  return wrapped


def _guard_delete(handler):
  """objects.delete: ifGenerationMatch on a live object that differs is a 412."""

  @functools.wraps(handler)
  def wrapped(request, response, storage, *args, **kwargs):
    failed = _precondition(request, storage, request.params["object_id"], on_read=True)
    if failed:
      return _failed(response, HTTPStatus.PRECONDITION_FAILED, failed[1])
    return handler(request, response, storage, *args, **kwargs)

  return wrapped


# Before the server module is imported: its route table takes these functions.
objects.get = _guard_read(objects.get)
objects.download = _guard_read(objects.download)
objects.insert = _guard_upload(objects.insert)
objects.delete = _guard_delete(objects.delete)

from gcp_storage_emulator import __main__ as emulator  # noqa: E402
from gcp_storage_emulator import server  # noqa: E402

assert server.HANDLERS[-1][1]["GET"] is objects.download, "emulator routes changed"

if __name__ == "__main__":
  sys.exit(emulator.main(sys.argv[1:]))
