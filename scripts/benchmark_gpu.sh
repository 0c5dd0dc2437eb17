#!/usr/bin/env bash
# GPU benchmark, in at most 8 minutes:
#   1. PandaPickCube-v0 env steps/s for B = 32,768 ... 1,024 (scripts/benchmark_env.py);
#   2. the same for PandaPickCubeVision-v0 with two 64x64 cameras;
#   3. seconds from launch to 90% evaluation success of PPO with a GPU-sized batch
#      (configs/mujoco_ppo_mlp_gpu.py; scripts/time_to_success.py, compile included);
# then one table with the card's name and the targets, and OUT/benchmark_gpu.json.
#
# Usage:
#   bash scripts/benchmark_gpu.sh             # results in $OUT, else ./bench_out
#   SMOKE=1 bash scripts/benchmark_gpu.sh     # tiny sizes on any backend: checks the script
#
# It installs nothing (the machine may have no network): it runs the repository in place
# with the Python it finds (PYTHON, default python) and says so, and stops, when that JAX
# has no GPU backend (ALLOW_CPU=1 runs anyway). Every stage has a hard time limit, and the
# largest batches run first, so a stage cut short still has the numbers that matter; the
# limits in seconds can be changed: STATE_S (130), VISION_S (120), PPO_S (160, plus 30 s to
# stop cleanly). Batches: BATCHES, VISION_BATCHES. Compiled programs go to a fresh cache,
# OUT/jax_cache, so the times include compiling.
set -uo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${OUT:-./bench_out}"
mkdir -p "${OUT}"
OUT="$(cd "${OUT}" && pwd)"
PY="${PYTHON:-python}"
SMOKE="${SMOKE:-0}"
export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
export PYTHONUNBUFFERED=1
if [ -z "${PANDA_RL_COMPILATION_CACHE:-}" ]; then
  rm -rf "${OUT}/jax_cache"
  export PANDA_RL_COMPILATION_CACHE="${OUT}/jax_cache"
fi
cd "${REPO_ROOT}"

if [ "${SMOKE}" = "1" ]; then
  BATCHES="${BATCHES:-16}"
  VISION_BATCHES="${VISION_BATCHES:-8}"
  IMAGE=16
  STEPS=2
  REPEATS=1
  STATE_S="${STATE_S:-120}"
  VISION_S="${VISION_S:-120}"
  PPO_S="${PPO_S:-150}"
  PPO_ARGS=(env.train.num_envs=32 rollout.num_steps=8 algorithm.num_minibatches=2
            algorithm.update_epochs=1 env.eval.num_envs=8 runner.max_epochs=1
            runner.val_check_interval=1)
  REPORT_ARGS=(--smoke)
else
  BATCHES="${BATCHES:-32768 16384 8192 4096 2048 1024}"
  VISION_BATCHES="${VISION_BATCHES:-32768 16384 8192 4096 2048 1024}"
  IMAGE=64
  STEPS=20
  REPEATS=2
  STATE_S="${STATE_S:-130}"
  VISION_S="${VISION_S:-120}"
  PPO_S="${PPO_S:-160}"
  PPO_ARGS=()
  REPORT_ARGS=()
fi

say() { echo "benchmark_gpu.sh: $*" >&2; }
START=$(date +%s)

# -- what this machine has -------------------------------------------------------------
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    | tee "${OUT}/nvidia_smi.csv"
else
  say "no nvidia-smi on this machine"
  : > "${OUT}/nvidia_smi.csv"
fi
if ! "${PY}" - "${OUT}" <<'EOF'
import contextlib, io, json, os, platform, sys
out = {"python": sys.version.split()[0], "machine": platform.platform(),
       "cpu_count": os.cpu_count()}
lines = open(os.path.join(sys.argv[1], "nvidia_smi.csv")).read().splitlines()
out["gpu_name"] = lines[1].split(",")[0].strip() if len(lines) > 1 else None
missing = []
for name in ("jax", "mujoco", "mujoco.mjx", "flax", "optax", "orbax.checkpoint",
             "tensorboardX", "ml_collections", "tqdm"):
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # mujoco.mjx prints about warp
      __import__(name)
  except Exception as e:
    missing.append(f"{name} ({type(e).__name__}: {e})")
out["missing"] = missing
if "jax" not in " ".join(missing):
  import jax
  from importlib import metadata
  plugins = sorted(d.metadata["Name"] for d in metadata.distributions()
                   if "jax" in (d.metadata["Name"] or "").lower() and "plugin" in
                   (d.metadata["Name"] or "").lower())
  devices = jax.devices()
  out.update(jax=jax.__version__, backend=jax.default_backend(), plugins=plugins,
             device_kind=devices[0].device_kind, device_count=len(devices),
             devices=[str(d) for d in devices])
json.dump(out, open(os.path.join(sys.argv[1], "device.json"), "w"), indent=2)
print(json.dumps(out, indent=2))
sys.exit(1 if missing else 0)
EOF
then
  say "the Python environment lacks packages (listed above in 'missing'); nothing to run."
  say "Install them where a package registry is reachable: pip install -e '.[gpu]'"
  exit 2
fi
BACKEND=$("${PY}" -c "import json,sys; print(json.load(open(sys.argv[1]))['backend'])" \
          "${OUT}/device.json")
if [ "${BACKEND}" != "gpu" ] && [ "${SMOKE}" != "1" ] && [ "${ALLOW_CPU:-0}" != "1" ]; then
  say "JAX's backend here is '${BACKEND}', not 'gpu': no GPU build of jax is installed"
  say "(or no GPU is visible). On a machine with a registry: pip install -e '.[gpu]'"
  say "(jax[cuda12]==0.9.2). Nothing was measured; SMOKE=1 or ALLOW_CPU=1 runs anyway."
  exit 3
fi

# -- 1. state env ------------------------------------------------------------------------
say "state env, batches ${BATCHES}, at most ${STATE_S}s"
# shellcheck disable=SC2086
timeout -k 5 "${STATE_S}" "${PY}" scripts/benchmark_env.py --env PandaPickCube-v0 \
  --batch ${BATCHES} --steps "${STEPS}" --repeats "${REPEATS}" --timeout "${STATE_S}" \
  --json "${OUT}/env_state.json" 2> "${OUT}/env_state.stderr.log"
say "state env stage: rc $? after $(( $(date +%s) - START ))s"

# -- 2. vision env -----------------------------------------------------------------------
say "vision env ${IMAGE}x${IMAGE}, batches ${VISION_BATCHES}, at most ${VISION_S}s"
# shellcheck disable=SC2086
timeout -k 5 "${VISION_S}" "${PY}" scripts/benchmark_env.py --env PandaPickCubeVision-v0 \
  --image-size "${IMAGE}" --batch ${VISION_BATCHES} --steps "${STEPS}" \
  --repeats "${REPEATS}" --timeout "${VISION_S}" --json "${OUT}/env_vision.json" \
  2> "${OUT}/env_vision.stderr.log"
say "vision env stage: rc $? after $(( $(date +%s) - START ))s"

# -- 3. PPO to 90% ---------------------------------------------------------------------
say "PPO (configs/mujoco_ppo_mlp_gpu.py) to 90% eval success, at most ${PPO_S}s"
timeout -k 5 $(( PPO_S + 40 )) "${PY}" scripts/time_to_success.py \
  --config configs/mujoco_ppo_mlp_gpu.py --threshold 0.9 --max-seconds "${PPO_S}" \
  --grace 30 --json "${OUT}/ppo_gpu.json" --log-path "${OUT}/runs" \
  ${PPO_ARGS[@]+"${PPO_ARGS[@]}"}
say "PPO stage: rc $? after $(( $(date +%s) - START ))s"

# -- the table ---------------------------------------------------------------------------
"${PY}" scripts/gpu_report.py "${OUT}" ${REPORT_ARGS[@]+"${REPORT_ARGS[@]}"}
say "done in $(( $(date +%s) - START ))s; results in ${OUT}"
