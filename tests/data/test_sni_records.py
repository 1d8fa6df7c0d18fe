"""Reader: typed records, validation errors naming file and field, skip policy."""

import json
import os

import pytest

from mode_jax.data import sni

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
GOOD = {
    "Source": ["s"], "Categories": ["Question Answering"], "Definition": ["Do it"],
    "Input_language": ["English"], "Output_language": ["English"],
    "Instruction_language": ["English"],
    "Positive Examples": [{"input": "a", "output": "b", "explanation": "c"}],
    "Negative Examples": [],
    "Instances": [{"id": "t-1", "input": "x", "output": ["y", "z"]},
                  {"id": "t-2", "input": "x2", "output": ["y2"]}],
}


def write(tmp_path, obj, name="task9999_fixture.json"):
  path = tmp_path / name
  path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
  return str(path)


def test_all_sample_tasks_parse():
  names = sorted(os.listdir(os.path.join(SAMPLE, "tasks")))
  assert len(names) >= 15
  for name in names:
    task = sni.read_task(os.path.join(SAMPLE, "tasks", name))
    assert task.name == name[:-5]
    assert task.instances and all(i.outputs for i in task.instances)
    assert len({i.id for i in task.instances}) == len(task.instances)
    assert task.positive_examples


def test_record_fields():
  task = sni.read_task(os.path.join(SAMPLE, "tasks", "task1146_country_capital.json"))
  assert task.definition.startswith("In this task, you are given a country name")
  assert task.categories == ("Misc.",) and task.category == "misc."
  assert task.input_language == task.output_language == task.instruction_language == (
      "English",)
  assert task.is_english
  assert task.positive_examples[0].input == "United States"
  assert task.positive_examples[0].output == "Washington"
  assert task.negative_examples[0].output == "Rome"
  assert task.instances[0].id == "task1146-caea1179adc149ffb2a3ecb2ea3abefc"
  assert task.instances[0].outputs == ("Kabul",)
  assert len(task.instances) == 79 and task.skipped == 0


def test_nan_url_is_accepted():
  path = os.path.join(SAMPLE, "tasks", "task063_first_i_elements.json")
  assert "NaN" in open(path).read()
  assert sni.read_task(path).instances


def test_several_references_kept():
  task = sni.read_task(os.path.join(SAMPLE, "tasks",
                                    "task111_asset_sentence_simplification.json"))
  assert len(task.instances) == 8
  assert all(7 <= len(i.outputs) <= 9 for i in task.instances)


@pytest.mark.parametrize("mutate, match", [
    (lambda d: d.pop("Definition"), "missing field 'Definition'"),
    (lambda d: d.update(Definition="plain string"), "'Definition' must be a list"),
    (lambda d: d.pop("Input_language"), "missing field 'Input_language'"),
    (lambda d: d["Instances"][1].update(output=[]), r"Instances\[1\] \(id 't-2'\) has no output"),
    (lambda d: d["Instances"][1].pop("output"), "field 'output' must be a list"),
    (lambda d: d["Instances"][0].pop("id"), r"Instances\[0\] has no string field 'id'"),
    (lambda d: d["Instances"][1].update(id="t-1"), "duplicate id 't-1'"),
    (lambda d: d.pop("Instances"), "missing field 'Instances'"),
])
def test_malformed_raises_naming_file_and_field(tmp_path, mutate, match):
  obj = json.loads(json.dumps(GOOD))
  mutate(obj)
  path = write(tmp_path, obj)
  with pytest.raises(sni.SniFormatError, match=match) as e:
    sni.read_task(path)
  assert path in str(e.value) and e.value.path == path


def test_broken_json_names_file(tmp_path):
  path = write(tmp_path, '{"Definition": ["x"], "Instances": [')
  with pytest.raises(sni.SniFormatError, match="invalid JSON") as e:
    sni.read_task(path)
  assert path in str(e.value)


def test_old_format_file_is_rejected_clearly():
  path = os.path.join(FIXTURES, "task269_csrg_counterfactual_story_generation.json")
  with pytest.raises(sni.SniFormatError) as e:
    sni.read_task(path)
  msg = str(e.value)
  assert path in msg and "'Definition' must be a list of strings, got str" in msg


def test_skip_policy_counts_skips(tmp_path):
  obj = json.loads(json.dumps(GOOD))
  obj["Instances"] += [{"id": "t-3", "input": "x"}, {"input": "no id", "output": ["o"]},
                       {"id": "t-4", "input": "x", "output": []}]
  path = write(tmp_path, obj)
  with pytest.raises(sni.SniFormatError):
    sni.read_task(path)
  task = sni.read_task(path, on_error="skip")
  assert task.skipped == 3
  assert [i.id for i in task.instances] == ["t-1", "t-2"]
  with pytest.raises(ValueError, match="on_error"):
    sni.read_task(path, on_error="ignore")


def test_header_read_matches_full_read():
  path = os.path.join(SAMPLE, "tasks", "task1146_country_capital.json")
  head = sni.read_header(path)
  full = json.load(open(path))
  assert "Instances" not in head
  assert head["Input_language"] == full["Input_language"]
  assert head["Categories"] == full["Categories"]
