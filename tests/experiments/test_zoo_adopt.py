"""The zoo adopts a run trained outside it (train.py into the row's folder): training time from the run's own
records, nothing retrained; a run not at its last step is not adopted."""

import json

from experiments import zoo


def fake_run(tmp_path, *, starts, metric_times, checkpoints):
  for step in checkpoints:
    (tmp_path / "checkpoints" / str(step)).mkdir(parents=True)
  with open(tmp_path / "machine.jsonl", "w") as f:
    for t in starts:
      f.write(json.dumps({"time": t, "cpu": "x", "cores": 2, "backend": "cpu", "jax": "0"}) + "\n")
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for i, t in enumerate(metric_times):
      f.write(json.dumps({"step": 50 * (i + 1), "time": t, "train/loss": 1.0}) + "\n")


def fresh_state():
  return {"row": "r", "seed": 0, "train_images": 0, "attempts": [], "trained": False, "evaluated": False}


def test_a_finished_outside_run_is_adopted_with_its_own_time(tmp_path):
  # Two starts (a resume): 100 -> last record 160 before the second start at 200, then 200 -> 290.
  fake_run(tmp_path, starts=[100.0, 200.0], metric_times=[130.0, 160.0, 250.0, 290.0], checkpoints=[250, 400])
  state = fresh_state()
  assert zoo.adopt_training(state, str(tmp_path), 400)
  assert state["trained"] and [a["seconds"] for a in state["attempts"]] == [60.0, 90.0]
  assert all(a["adopted"] for a in state["attempts"])


def test_an_unfinished_or_known_run_is_not_adopted(tmp_path):
  fake_run(tmp_path, starts=[100.0], metric_times=[130.0], checkpoints=[250])
  assert not zoo.adopt_training(fresh_state(), str(tmp_path), 400)  # not at its last step: the zoo resumes it
  known = fresh_state() | {"attempts": [{"start": 1.0, "seconds": 5.0, "commit": "abc"}]}
  fake_run(tmp_path / "other", starts=[100.0], metric_times=[130.0], checkpoints=[400])
  assert not zoo.adopt_training(known, str(tmp_path / "other"), 400)  # the zoo's own run


def test_a_run_older_than_an_opt_in_key_matches_only_with_the_key_off(tmp_path):
  import ml_collections
  import pytest

  config = ml_collections.ConfigDict({"seed": 0, "prefetch_to_device": 0,
                                      "data": {"image_size": 128, "device_augment": False}})
  with open(tmp_path / "config.json", "w") as f:
    json.dump({"seed": 0, "data": {"image_size": 128}}, f)  # trained before the two keys existed
  zoo.check_run_dir(str(tmp_path), config)
  config.data.device_augment = True
  with pytest.raises(zoo.ZooError, match=r"data.device_augment: None there, True now"):
    zoo.check_run_dir(str(tmp_path), config)
  config.data.device_augment, config.data.image_size = False, 64
  with pytest.raises(zoo.ZooError, match=r"data.image_size: 128 there, 64 now"):
    zoo.check_run_dir(str(tmp_path), config)
