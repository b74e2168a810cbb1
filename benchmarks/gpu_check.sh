#!/usr/bin/env bash
# One short training run of every script on a machine with a CUDA GPU, one line per script:
#   <script>: ok|failed (...), <seconds> s, peak GPU memory <MiB> MiB
# UNTRIED: written on a machine without a GPU (its flags were run on the CPU with a tiny model instead).
# The RL folders take --device (auto: cuda here; their small networks are faster on the CPU, which
# `--device cpu` picks); grpo_lm and ppo_rlhf_math's PPO stage place their models through accelerate; ppo_rlhf_math's SFT and reward stages stay on the CPU. Each
# script runs in-process under a small Python wrapper, so torch.cuda.max_memory_allocated() sees all of it.
#   bash benchmarks/gpu_check.sh        (after the README's setup line; runs write to a temporary folder)
set -uo pipefail
cd "$(dirname "$0")/.."
if ! python -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check: torch sees no CUDA device (torch.cuda.is_available() is False); nothing to check" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export MPLBACKEND=Agg SDL_VIDEODRIVER=dummy HF_HUB_OFFLINE=1

check() {  # check NAME SCRIPT FLAGS...: run SCRIPT with FLAGS, print one line
  python - "$@" <<'PY'
import runpy, sys, time
import torch
name, script, *flags = sys.argv[1:]
sys.argv = [script, *flags]
status, t0 = "ok", time.time()
try:
    runpy.run_path(script, run_name="__main__")
except SystemExit as exit_:
    if exit_.code not in (0, None):
        status = f"failed (exit {exit_.code})"
except Exception as err:  # the line says what broke; the traceback is above it
    import traceback
    traceback.print_exc()
    status = f"failed ({type(err).__name__}: {str(err).splitlines()[0][:100] if str(err) else ''})"
print(f"{name}: {status}, {time.time() - t0:.1f} s, peak GPU memory "
      f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB", file=sys.stderr)
PY
}

check cartpole_reinforce cartpole_reinforce/train.py --max-episodes 2 --eval-episodes 1 --out "$tmp/cartpole"
check lunarlander_ppo lunarlander_ppo/train.py --num-envs 2 --num-steps 16 --num-minibatches 2 \
  --update-epochs 1 --total-timesteps 32 --eval-every 32 --eval-episodes 1 --out "$tmp/lunarlander"
check tictactoe_selfplay tictactoe_selfplay/train.py --games 8 --games-per-update 8 --out "$tmp/tictactoe"
check grpo_lm grpo_lm/train.py --steps 1 --prompts-per-step 4 --num-generations 8 --warmup-examples 0 \
  --eval-size 32 --out "$tmp/grpo"
rlhf=(--out "$tmp/rlhf" --eval-size 32)
check "ppo_rlhf_math sft" ppo_rlhf_math/train.py --stage sft --sft-examples 32 "${rlhf[@]}"
check "ppo_rlhf_math reward" ppo_rlhf_math/train.py --stage reward --rm-problems 16 --rm-eval-problems 8 \
  --rm-arithmetic-steps 5 --rm-warmup-steps 5 --rm-steps 5 "${rlhf[@]}"
check "ppo_rlhf_math ppo" ppo_rlhf_math/train.py --stage ppo --ppo-steps 1 "${rlhf[@]}"
