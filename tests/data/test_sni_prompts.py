"""Tk-Instruct prompt format, byte for byte, and the token budget."""

import os

from mode_jax.data import prompts
from mode_jax.data import records
from mode_jax.data import sni

SAMPLE = os.path.join(os.path.dirname(__file__), "..", "..", "data", "sni_sample")
TASK = records.TaskRecord(
    name="task0_demo", definition="  Answer the question  ",
    positive_examples=(records.Example("What is 2+2?", "4", "Simple sum"),
                       records.Example(" Capital of France", "Paris.", "Paris is the capital")),
    negative_examples=(records.Example("1+1", "3", "Wrong sum"),),
    instances=(records.Instance("t-1", " Name a colour ", ("red", "blue")),),
    categories=("Misc.",), input_language=("English",), output_language=("English",),
    instruction_language=("English",))
INST = TASK.instances[0]

DEFAULT = ("Definition: Answer the question.\n\n"
           " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n\n"
           " Positive Example 2 -\nInput: Capital of France.\n Output: Paris.\n\n"
           "Now complete the following example -\nInput: Name a colour.\nOutput: ")


def test_default_format():
  assert sni.format_prompt(TASK, INST) == DEFAULT


def test_all_options():
  got = sni.format_prompt(TASK, INST, num_pos=1, num_neg=1, add_explanation=True,
                          add_task_name=True)
  assert got == ("task0_demo. Definition: Answer the question.\n\n"
                 " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n"
                 " Explanation: Simple sum.\n\n"
                 " Negative Example 1 -\nInput: 1+1.\n Output: 3.\n"
                 " Explanation: Wrong sum.\n\n"
                 "Now complete the following example -\nInput: Name a colour.\nOutput: ")


def test_definition_only_and_no_definition():
  assert sni.format_prompt(TASK, INST, num_pos=0) == (
      "Definition: Answer the question.\n\n"
      "Now complete the following example -\nInput: Name a colour.\nOutput: ")
  assert sni.format_prompt(TASK, INST, num_pos=1, definition=False) == (
      " Positive Example 1 -\nInput: What is 2+2?\n Output: 4.\n\n"
      "Now complete the following example -\nInput: Name a colour.\nOutput: ")


def test_real_task():
  task = sni.read_task(os.path.join(SAMPLE, "tasks", "task1146_country_capital.json"))
  assert sni.format_prompt(task, task.instances[0]) == (
      "Definition: In this task, you are given a country name and you need to return the "
      "capital city of the given country.\n\n"
      " Positive Example 1 -\nInput: United States.\n Output: Washington.\n\n"
      " Positive Example 2 -\nInput: India.\n Output: New Delhi.\n\n"
      "Now complete the following example -\nInput: Afghanistan.\nOutput: ")


def encode(text):  # One token per character: counts are easy to check by hand.
  return [ord(c) for c in text]


def decode(ids):
  return "".join(chr(i) for i in ids)


def fit(budget, **kw):
  return prompts.fit_prompt(TASK, INST, encode, decode, budget, **kw)


def test_budget_keeps_all_when_it_fits():
  f = fit(len(DEFAULT))
  assert f.text == DEFAULT and not f.truncated and (f.num_pos, f.num_neg) == (2, 0)
  assert decode(f.ids) == DEFAULT


def test_budget_adds_examples_one_by_one():
  one = sni.format_prompt(TASK, INST, num_pos=1)
  f = fit(len(DEFAULT) - 1)
  assert f.text == one and f.num_pos == 1 and not f.truncated
  f = fit(len(one) + 5, num_neg=1)  # Negative does not fit after one positive.
  assert f.text == one and (f.num_pos, f.num_neg) == (1, 0)


def test_over_budget_truncates_from_the_left():
  zero = sni.format_prompt(TASK, INST, num_pos=0)
  f = fit(len(zero) - 10)
  assert f.truncated and f.num_pos == 0 and len(f.ids) == len(zero) - 10
  assert f.text == zero[10:]
  assert f.text.endswith("Now complete the following example -\nInput: Name a colour.\nOutput: ")
