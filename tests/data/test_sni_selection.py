"""Task selection: split files, English filter, partial copies, case study."""

import json
import os
import shutil

import pytest

from mode_jax.data import sni

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")


def test_split_files_verbatim():
  assert len(sni.read_split(SAMPLE, "train")) == 756
  assert len(sni.read_split(SAMPLE, "test")) == 119
  assert len(sni.read_split(SAMPLE, "excluded")) == 738


def test_partial_copy_requires_allow_missing():
  with pytest.raises(FileNotFoundError, match=r"task\d+_\w+") as e:
    sni.list_tasks(SAMPLE)
  assert "allow_missing" in str(e.value)
  sel = sni.select_tasks(SAMPLE, "train", allow_missing=True)
  present = {n[:-5] for n in os.listdir(os.path.join(SAMPLE, "tasks"))}
  train = set(sni.read_split(SAMPLE, "train"))
  assert set(sel.names) == present & train
  assert len(sel.missing) == 756 - len(sel.names)
  assert "task1146_country_capital" in sel.names


def test_missing_task_named_in_error():
  with pytest.raises(FileNotFoundError, match="task025_cosmosqa_incorrect_answer_generation"):
    sni.select_tasks(SAMPLE, tasks=["task024", "task025"])


def test_english_filter(tmp_path):
  shutil.copytree(SAMPLE, tmp_path / "sni")
  path = tmp_path / "sni" / "tasks" / "task1146_country_capital.json"
  obj = json.load(open(path))
  obj["Output_language"] = ["Spanish"]
  path.write_text(json.dumps(obj))
  sel = sni.select_tasks(tmp_path / "sni", "train", allow_missing=True)
  assert "task1146_country_capital" in sel.non_english
  assert "task1146_country_capital" not in sel.names
  names = sni.list_tasks(tmp_path / "sni", english_only=False, allow_missing=True)
  assert "task1146_country_capital" in names


def test_ids_resolve_and_ambiguous_ids_raise():
  assert sni.resolve_ids(SAMPLE, ["task1146", "task622"]) == [
      "task1146_country_capital",
      "task622_replace_alphabets_in_a_list_by_their_position_in_english_alphabet"]
  with pytest.raises(ValueError, match="ambiguous"):
    sni.resolve_ids(SAMPLE, ["task672"])


def test_case_study_list():
  assert len(sni.CASE_STUDY) == 15
  train = set(sni.read_split(SAMPLE, "train"))
  assert set(sni.CASE_STUDY) <= train
  sel = sni.select_tasks(SAMPLE, tasks=sni.CASE_STUDY, allow_missing=True)
  assert set(sel.missing) == {
      "task025_cosmosqa_incorrect_answer_generation", "task074_squad1.1_question_generation",
      "task192_hotpotqa_sentence_generation", "task269_csrg_counterfactual_story_generation",
      "task1729_personachat_generate_next"}
  assert len(sel.names) == 10
