"""The test server answers generations as GCS does (see emulator_main.py).

Plain HTTP against the running server, then the TensorStore exchange that
failed before the patch: a second commit to one OCDBT database.
"""

import json
import urllib.error
import urllib.parse
import urllib.request


def _call(url, method="GET", data=None, headers=None):
  """(status, headers, body) of one request; HTTP errors are answers too."""
  req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
  try:
    with urllib.request.urlopen(req, timeout=30) as r:
      return r.status, r.headers, r.read()
  except urllib.error.HTTPError as e:
    return e.code, e.headers, e.read()


def _upload(gcs, name, data, **conditions):
  query = urllib.parse.urlencode({"uploadType": "media", "name": name, **conditions})
  return _call(f"{gcs['url']}/upload/storage/v1/b/{gcs['bucket']}/o?{query}", "POST", data,
               {"Content-Type": "application/octet-stream"})


def _object(gcs, name, query=""):
  quoted = urllib.parse.quote(name, safe="")
  return f"{gcs['url']}/storage/v1/b/{gcs['bucket']}/o/{quoted}{query}"


def test_generation_header_and_preconditions(gcs):
  name = "emulator/generations.bin"
  status, _, body = _upload(gcs, name, b"abcdef", ifGenerationMatch=0)
  assert status == 200
  gen = int(json.loads(body)["generation"])
  assert gen > 0
  assert _upload(gcs, name, b"again", ifGenerationMatch=0)[0] == 412  # exists already
  assert _upload(gcs, name, b"stale", ifGenerationMatch=gen + 1)[0] == 412
  assert _upload(gcs, "emulator/absent.bin", b"x", ifGenerationMatch=gen)[0] == 412

  status, headers, body = _call(_object(gcs, name, "?alt=media"))
  assert (status, body, int(headers["x-goog-generation"])) == (200, b"abcdef", gen)
  assert headers["x-goog-metageneration"] == "1"
  status, headers, body = _call(_object(gcs, name, "?alt=media"), headers={"Range": "bytes=2-3"})
  assert (status, body, int(headers["x-goog-generation"])) == (206, b"cd", gen)
  assert _call(_object(gcs, name, f"?alt=media&ifGenerationNotMatch={gen}"))[0] == 304
  assert _call(_object(gcs, name, f"?alt=media&ifGenerationMatch={gen + 1}"))[0] == 412
  assert _call(_object(gcs, name, f"?alt=json&ifGenerationMatch={gen}"))[0] == 200
  assert _call(_object(gcs, "emulator/absent.bin", "?alt=media&ifGenerationMatch=0"))[0] == 404

  status, _, body = _upload(gcs, name, b"second", ifGenerationMatch=gen)
  assert status == 200
  gen2 = int(json.loads(body)["generation"])
  assert gen2 != gen
  assert _call(_object(gcs, name, f"?ifGenerationMatch={gen}"), "DELETE")[0] == 412
  assert _call(_object(gcs, name, f"?ifGenerationMatch={gen2}"), "DELETE")[0] in (200, 204)
  assert _call(_object(gcs, name, "?alt=media"))[0] == 404


def test_tensorstore_commits_to_one_ocdbt_database_repeatedly(gcs):
  import tensorstore as ts  # pylint: disable=g-import-not-at-top
  spec = {"driver": "ocdbt", "base": f"{gcs['root']}/emulator/ocdbt/"}
  for i in range(3):  # a fresh context each time: every commit reads the manifest
    kv = ts.KvStore.open(spec, context=ts.Context()).result()
    kv.write(f"k{i}", f"v{i}".encode()).result()
  kv = ts.KvStore.open(spec, context=ts.Context()).result()
  assert kv.list().result() == [b"k0", b"k1", b"k2"]
  assert kv.read("k1").result().value == b"v1"
