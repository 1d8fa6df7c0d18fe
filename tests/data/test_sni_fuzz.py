"""Fuzz: malformed SNI task files are accepted correctly or named, never anything else.

The test writes one directory of task files generated from a valid task:
every field dropped, every field of the wrong type, instance fields broken,
truncations at seeded random byte offsets, other encodings and invalid
Unicode, odd sizes (empty, 2000 instances, 200 KB inputs, nesting deeper
than the JSON parser). Each file knows its expected outcome ("ok" or
"error"), and each goes through
1. `read_task` and the registration header scan (`header_is_english`);
2. `register_sni` of that one task plus `require_examples` of its mixture,
   the check the trainer runs before building a model (it parses the file);
3. one batch: all accepted files in one mixture (every task is tokenised
   when the mixture's dataset is built), and a few broken files each in a
   mixture with a good task, straight through `BatchIterator` without the
   pre-check, so an error from inside the seqio/TF pipeline is seen too.
Stage 3 runs once for all accepted files rather than once per file: a
tf.data mixture build costs about a second, stages 1-2 milliseconds.
Every outcome must be a correct acceptance or `SniFormatError` naming the
file; any other exception, a hang (an alarm fails the test) or an accepted
file missing from the registration fails.
"""

import contextlib
import json
import logging
import os
import random
import signal

import pytest
import seqio

from mode_jax.data import config
from mode_jax.data import pipeline
from mode_jax.data import sni
from mode_jax.data import tasks

REQUIRED = ("Definition", "Categories", "Input_language", "Output_language",
            "Instruction_language", "Source", "Positive Examples", "Negative Examples",
            "Instances")
OPTIONAL = ("Contributors", "URL", "Reasoning", "Domains", "Instance License")
WRONG = (5, "text", None, {"a": 1}, [1, 2])
LENGTHS = {"inputs": 64, "targets": 16}
CFG = config.SniConfig(max_input_tokens=64)


def _base(n=12):
  return {
      "Contributors": ["fuzz"], "Source": ["synthetic"], "URL": ["http://x"],
      "Categories": ["Question Answering"], "Reasoning": [], "Definition": ["Answer it."],
      "Input_language": ["English"], "Output_language": ["English"],
      "Instruction_language": ["English"], "Domains": ["Misc"],
      "Positive Examples": [{"input": "1+1", "output": "2", "explanation": "sum"}],
      "Negative Examples": [],
      "Instances": [{"id": f"i{k}", "input": f"question {k} é", "output": [f"answer {k}"]}
                    for k in range(n)],
      "Instance License": ["MIT"]}


def _dump(obj) -> bytes:
  return json.dumps(obj, ensure_ascii=False).encode()


def _cases():
  """[(name, bytes, "ok" | "error" | "non_english")]; names are valid task names."""
  out = []

  def add(tag, data, expect):
    out.append((f"task9{len(out):03d}_{tag}", data, expect))

  base = _base()
  add("valid", _dump(base), "ok")
  add("instances_first", _dump({"Instances": base["Instances"],
                                **{k: v for k, v in base.items() if k != "Instances"}}), "ok")
  langs_last = {k: v for k, v in base.items() if "language" not in k}
  langs_last.update({k: base[k] for k in sni.LANGUAGE_FIELDS})
  add("languages_after_instances", _dump(langs_last), "ok")
  add("spanish", _dump(dict(base, Output_language=["Spanish"])), "non_english")
  for field in REQUIRED + OPTIONAL:
    add(f"drop_{field.replace(' ', '_')}", _dump({k: v for k, v in base.items() if k != field}),
        "error" if field in REQUIRED else "ok")
  for field in REQUIRED:
    for i, value in enumerate(WRONG):
      add(f"wrong_{field.replace(' ', '_')}_{i}", _dump(dict(base, **{field: value})), "error")
  for field in OPTIONAL:
    add(f"wrong_{field.replace(' ', '_')}", _dump(dict(base, **{field: 7})), "ok")
  for tag, change in [("no_id", lambda x: x.pop("id")), ("no_input", lambda x: x.pop("input")),
                      ("no_output", lambda x: x.pop("output")),
                      ("input_int", lambda x: x.update(input=5)),
                      ("input_list", lambda x: x.update(input=["a"])),
                      ("output_str", lambda x: x.update(output="a")),
                      ("output_ints", lambda x: x.update(output=[1])),
                      ("output_empty", lambda x: x.update(output=[])),
                      ("id_int", lambda x: x.update(id=7)),
                      ("dup_id", lambda x: x.update(id="i0"))]:
    obj = _base()
    change(obj["Instances"][3])
    add(f"instance_{tag}", _dump(obj), "error")
  obj = _base()
  obj["Instances"][2] = "not an object"
  add("instance_not_object", _dump(obj), "error")
  add("instances_empty", _dump(dict(base, Instances=[])), "error")
  full = _dump(base)
  rng = random.Random(0)
  for off in sorted(rng.sample(range(1, len(full) - 1), 15)):
    add(f"truncated_at_{off}", full[:off], "error")
  text = json.dumps(base, ensure_ascii=False)
  add("utf16", text.encode("utf-16"), "error")
  add("utf16le", text.encode("utf-16-le"), "error")
  add("latin1", text.encode("latin-1"), "error")
  add("utf8_bom", b"\xef\xbb\xbf" + text.encode(), "ok")
  add("invalid_byte", full[:200] + b"\xff" + full[200:], "error")
  add("lone_surrogate_input", json.dumps(base).replace("question 3", "question \\ud800 3")
      .encode(), "error")
  add("lone_surrogate_definition", json.dumps(base).replace("Answer it.", "Answer \\udfff")
      .encode(), "error")
  add("surrogate_pair", json.dumps(base).replace("question 3", "question \\ud83d\\ude00 3")
      .encode(), "ok")
  add("raw_control_char", full.replace(b"question 4", b"question\x01 4"), "error")
  add("nan_url", text.replace('"http://x"', "NaN").encode(), "ok")
  add("empty_file", b"", "error")
  add("empty_object", b"{}", "error")
  for i, top in enumerate(("[]", '"text"', "null", "3", "[{}]")):
    add(f"top_level_{i}", top.encode(), "error")
  add("deep_nesting_top", b"[" * 100_000 + b"]" * 100_000, "error")
  deep = json.dumps(dict(base, Contributors="@@")).replace('"@@"', "[" * 50_000 + "]" * 50_000)
  add("deep_nesting_field", deep.encode(), "error")
  add("many_instances", _dump(_base(2000)), "ok")
  big = _base()
  big["Instances"][0]["input"] = "long text " * 20_000
  add("long_input", _dump(big), "ok")
  return out


@contextlib.contextmanager
def _deadline(seconds):
  def boom(*_):
    raise TimeoutError(f"no answer within {seconds} s (a hang)")
  old = signal.signal(signal.SIGALRM, boom)
  signal.alarm(seconds)
  try:
    yield
  finally:
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  root = tmp_path_factory.mktemp("fuzz") / "sni"
  (root / "tasks").mkdir(parents=True)
  (root / "splits" / "default").mkdir(parents=True)
  cases = _cases()
  for name, data, _ in cases:
    (root / "tasks" / f"{name}.json").write_bytes(data)
  names = "\n".join(n for n, _, _ in cases) + "\n"
  for split in sni.SPLITS:
    (root / "splits" / "default" / f"{split}_tasks.txt").write_text(
        names if split == "train" else "")
  return str(root), cases, str(tmp_path_factory.mktemp("cache"))


def _outcome(fn):
  """"ok" or "error" (SniFormatError naming the file); other exceptions propagate."""
  try:
    fn()
  except sni.SniFormatError as e:
    return "error", e
  return "ok", None


def test_corpus_is_large_and_mixed(corpus):
  _, cases, _ = corpus
  kinds = [e for _, _, e in cases]
  assert len(cases) >= 50
  assert kinds.count("ok") >= 10 and kinds.count("error") >= 50


def test_read_task_and_header_scan(corpus):
  root, cases, _ = corpus
  with _deadline(120):
    for name, _, expect in cases:
      path = sni.task_path(root, name)
      got, err = _outcome(lambda: sni.read_task(path))
      assert got == ("ok" if expect == "non_english" else expect), (name, err)
      if err is not None:
        assert path in str(err), (name, err)
      got, err = _outcome(lambda: sni.header_is_english(path))
      if expect in ("ok", "non_english"):
        assert got == "ok" and sni.header_is_english(path) == (expect == "ok"), (name, err)
      elif err is not None:
        assert path in str(err), (name, err)


def test_registration_and_pre_batch_check(corpus, caplog):
  root, cases, cache = corpus
  with _deadline(240), caplog.at_level(logging.WARNING):
    for i, (name, _, expect) in enumerate(cases):
      reg = None

      def register():
        nonlocal reg
        reg = tasks.register_sni(root, CFG, cache_dir=cache, tasks=[name], prefix=f"fz{i}",
                                 case_study=False, test=False)
        if expect != "non_english":
          tasks.require_examples(reg.mixtures["train"])

      got, err = _outcome(register)
      if expect == "non_english":
        assert got == "ok" and reg.non_english == (name,) and "train" not in reg.mixtures
        assert name in caplog.text and "not English" in caplog.text
        continue
      assert got == expect, (name, err)
      if got == "ok":  # Never a silent drop: an accepted file is selected and counted.
        assert reg.selected == (name,)
      else:
        assert sni.task_path(root, name) in str(err), (name, err)


def _first_batch(name):
  it = pipeline.BatchIterator(name, LENGTHS, 4, seed=0)
  batch = next(it)
  assert batch["decoder_target_tokens"].shape == (4, sum(LENGTHS.values()))
  return batch


def test_one_batch_of_all_accepted_files(corpus):
  root, cases, cache = corpus
  ok = [n for n, _, e in cases if e == "ok"]
  with _deadline(300):
    reg = tasks.register_sni(root, CFG, cache_dir=cache, tasks=ok, prefix="fzok",
                             case_study=False, test=False)
    assert reg.selected == tuple(ok)
    counts = tasks.require_examples(reg.mixtures["train"])
    assert len(counts) == len(ok) and all(counts.values())
    _first_batch(reg.mixtures["train"])
    for t in reg.tasks:  # Building the mixture tokenised every accepted task.
      shard, = seqio.get_mixture_or_task(t).source.list_shards("train")
      meta = json.load(open(os.path.join(os.path.dirname(shard), "meta.json")))
      assert meta["counts"]["train"] == counts[t] > 0, t


# Where each kind of damage is caught: by the registration's header scan
# (the task's JSON is read whole when its instances are counted), or only
# when the mixture's first batch reads the task's records. Each case must
# take its own branch, so neither branch can pass unexercised.
BROKEN_AT = {"instance_output_str": "first_batch", "truncated_at": "registration",
             "lone_surrogate_input": "first_batch", "instances_empty": "first_batch"}


@pytest.mark.parametrize("tag", sorted(BROKEN_AT))
def test_broken_file_in_a_mixture_is_named_where_expected(corpus, tag):
  root, cases, cache = corpus
  bad = next(n for n, _, e in cases if tag in n and e == "error")
  good = next(n for n, _, e in cases if e == "ok")
  with _deadline(120):
    try:
      reg = tasks.register_sni(root, CFG, cache_dir=cache, tasks=[good, bad],
                               prefix=f"fzbad_{tag}", case_study=False, test=False)
    except sni.SniFormatError as e:  # The header scan already saw it.
      assert BROKEN_AT[tag] == "registration", (tag, str(e))
      assert sni.task_path(root, bad) in str(e)
      return
    assert BROKEN_AT[tag] == "first_batch", f"{tag}: registration accepted {bad}"
    with pytest.raises(sni.SniFormatError) as e:
      _first_batch(reg.mixtures["train"])
  assert sni.task_path(root, bad) in str(e.value)


def test_mixture_without_examples_is_a_named_error(tmp_path):
  root = tmp_path / "sni"
  (root / "tasks").mkdir(parents=True)
  (root / "splits" / "default").mkdir(parents=True)
  obj = _base(1)
  obj["Instances"][0]["id"] = "only"
  (root / "tasks" / "task9999_one.json").write_text(json.dumps(obj))
  for split in sni.SPLITS:
    (root / "splits" / "default" / f"{split}_tasks.txt").write_text(
        "task9999_one\n" if split == "train" else "")
  # One instance, placed in "validation" by eval_fraction=1: "train" is empty.
  reg = tasks.register_sni(str(root), config.SniConfig(max_input_tokens=64, eval_fraction=1.0),
                           cache_dir=str(tmp_path / "cache"), prefix="fzempty",
                           case_study=False, test=False)
  with pytest.raises(tasks.EmptyMixtureError, match="fzempty_train.*no 'train' examples"):
    tasks.require_examples(reg.mixtures["train"])
  with pytest.raises(ValueError, match="did you mean 'fzempty_train'"):
    tasks.require_examples("fzempty_trian")
