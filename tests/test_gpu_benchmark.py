"""The GPU benchmark's parts that run without a GPU: scripts/time_to_success.py reads the
runner's evaluation lines, and scripts/gpu_report.py turns the stages' JSON (complete,
partial or missing) into the summary with the targets."""

import json
import sys

from script_modules import load_script


def test_evaluation_lines_are_read():
  tts = load_script("time_to_success")
  line = ("[iter 40/100] env steps 5,242,880  eval/episode_len=61.5  eval/return=37.2  "
          "eval/success_once=0.9141  time/eval_s=0.8132\n")
  it, steps, values = tts.parse_eval(line)
  assert (it, steps, values["eval/success_once"]) == (40, 5_242_880, 0.9141)
  assert tts.parse_eval("Started in 6.0s (setup 5.5s, compile 3.9s; ...)") is None
  m = tts.STARTED.search("Started in 6.0s (setup 5.5s, compile 3.9s; compilation cache x)")
  assert m.groups() == ("6.0", "5.5", "3.9")


def _bench(batches, rate):
  rows = [{"batch": b, "env_steps_per_s": rate * b, "hang": False} for b in batches]
  return {"results": rows, "image_sizes": [64]}


def test_report_states_the_targets(tmp_path, monkeypatch, capsys):
  (tmp_path / "device.json").write_text(json.dumps(
      {"gpu_name": "NVIDIA H200", "jax": "0.9.2", "backend": "gpu"}))
  state = _bench([1024, 32768], 20.0)  # 655,360 env steps/s at the largest batch
  state["results"].append({"batch": 65536, "hang": False, "error": "XlaRuntimeError: OOM"})
  (tmp_path / "env_state.json").write_text(json.dumps(state))
  (tmp_path / "env_vision.json").write_text(json.dumps(_bench([1024], 5.0)))
  ppo = {"config": "configs/mujoco_ppo_mlp_gpu.py", "threshold": 0.9, "total_s": 150,
         "reached": {"iteration": 25, "env_steps": 3276800, "seconds": 131.5},
         "evals": [], "started": {"compile_s": 40.0}}
  (tmp_path / "ppo_gpu.json").write_text(json.dumps(ppo))
  monkeypatch.setattr(sys, "argv", ["gpu_report.py", str(tmp_path)])
  load_script("gpu_report").main()
  printed = capsys.readouterr().out
  assert "NVIDIA H200" in printed and "655,360" in printed and "failed: XlaRuntimeError" in printed
  summary = json.loads((tmp_path / "benchmark_gpu.json").read_text())
  t = summary["targets"]
  assert t["state_env_steps_per_s"] == {"target": 500_000, "best": 655_360.0,
                                        "at_batch": 32768, "met": True}
  assert t["ppo_seconds_to_90"]["seconds"] == 131.5 and not t["ppo_seconds_to_90"]["met"]


def test_report_of_stages_that_did_not_run(tmp_path, monkeypatch, capsys):
  monkeypatch.setattr(sys, "argv", ["gpu_report.py", str(tmp_path)])
  load_script("gpu_report").main()
  printed = capsys.readouterr().out
  assert "no env throughput measured" in printed and "PPO: not run" in printed
  t = json.loads((tmp_path / "benchmark_gpu.json").read_text())["targets"]
  assert not t["state_env_steps_per_s"]["met"] and not t["ppo_seconds_to_90"]["met"]
