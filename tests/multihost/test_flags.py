"""The --multihost flags of every entry point (parsing only; the runs are in test_multihost)."""

import pytest

from mode_jax import launch


def test_multihost_flags_default_to_auto_detection():
  args = launch.parse_flags(["--gin_file=x.gin", "--multihost"])
  assert args.multihost and (args.coordinator_address, args.num_processes,
                             args.process_id) == (None, None, None)
  args = launch.parse_flags(["--multihost", "--coordinator_address=127.0.0.1:1234",
                             "--num_processes=4", "--process_id=3"])
  assert (args.coordinator_address, args.num_processes, args.process_id) == (
      "127.0.0.1:1234", 4, 3)


@pytest.mark.parametrize("argv, message", [
    (["--process_id=0"], "--process_id needs --multihost"),
    (["--multihost", "--num_processes=2", "--process_id=2"], "--process_id must be in"),
    (["--multihost", "--num_processes=0"], "--num_processes must be >= 1"),
])
def test_bad_multihost_flags_fail_naming_the_flag(argv, message, capsys):
  with pytest.raises(SystemExit):
    launch.parse_flags(argv)
  assert message in capsys.readouterr().err
