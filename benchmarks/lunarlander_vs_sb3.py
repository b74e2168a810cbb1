"""Time to a greedy 200 on LunarLander-v3: our PPO against Stable-Baselines3's, same machine, one go.

    pip install -r benchmarks/requirements.txt
    python benchmarks/lunarlander_vs_sb3.py --seeds 0 1 2 3 4     # about 15-30 minutes

Protocol, identical for both:
- one process, one torch thread, synchronous vectorised envs; for each seed ours runs, then SB3;
- every 32,768 environment steps, after the policy update that used them, 20 greedy episodes (seeds
  10000-10019); when their mean reaches 200, 100 more greedy episodes (seeds 20000-20099) confirm it.
  Time to score = training time up to the first confirmed check, evaluations excluded (the clock
  stops while evaluating). Both are evaluated by the same function (`evaluate` in lunarlander_ppo/train.py);
- two clocks: wall-clock, and the CPU time of the process, which is what wall-clock would be on an
  idle core and stays fair when other jobs share the machine (the load average is printed);
- SB3 uses the rl-baselines3-zoo hyperparameters for LunarLander (16 envs, n_steps 1024, batch 64,
  4 epochs, gamma 0.999, gae_lambda 0.98, ent_coef 0.01, MlpPolicy) and stops at 1M steps;
  ours runs lunarlander_ppo/train.py's defaults.
"""
import argparse
import contextlib
import importlib.util
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
EVAL_EVERY, TARGET, SB3_BUDGET = 32_768, 200.0, 1_000_000


def load_train():
    spec = importlib.util.spec_from_file_location("lunarlander_train", REPO / "lunarlander_ppo" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_ours(train, seed: int, tmp: str) -> dict:
    args = train.Args(seed=seed, eval_every=EVAL_EVERY, eval_episodes=20, stop_score=TARGET,
                      out=f"{tmp}/ours_s{seed}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = train.train(args)
    reached = summary["reached"] or {}
    return {"wall": reached.get("train_seconds", math.nan), "cpu": reached.get("cpu_seconds", math.nan),
            "steps": reached.get("global_step"), "sps": summary["global_step"] / summary["train_seconds"]}


class SB3Actor:
    """Lets `evaluate` drive an SB3 model: the same interface as our Agent.act."""

    def __init__(self, model):
        self.model = model

    def act(self, obs: torch.Tensor, greedy: bool = True):
        actions, _ = self.model.predict(obs.numpy(), deterministic=greedy)
        return torch.as_tensor(actions), None


def make_sb3_ppo(seed: int):
    """SB3's PPO with the rl-baselines3-zoo hyperparameters for LunarLander-v3 (also used by \
lunarlander_sb3_time_split.py)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env
    env = make_vec_env("LunarLander-v3", n_envs=16, seed=seed)
    return PPO("MlpPolicy", env, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98,
               ent_coef=0.01, seed=seed, device="cpu", verbose=0)


def run_sb3(train, seed: int) -> dict:
    from stable_baselines3.common.callbacks import BaseCallback

    class ConfirmedScore(BaseCallback):
        """Evaluates at the start of a rollout, i.e. after the update that used the previous ones, once
        EVAL_EVERY more steps have passed; the clocks stop while evaluating. Stops at a confirmed 200."""

        def _on_training_start(self):
            # shifted by each evaluation's duration
            self.wall, self.cpu = time.perf_counter(), time.process_time()
            self.next_eval, self.reached = EVAL_EVERY, None

        def clocks(self) -> tuple[float, float]:
            return time.perf_counter() - self.wall, time.process_time() - self.cpu

        def _on_rollout_start(self):
            if self.num_timesteps < self.next_eval:
                return
            self.next_eval += EVAL_EVERY
            wall, cpu = self.clocks()
            actor = SB3Actor(self.model)
            hit = np.mean(train.evaluate(actor, "LunarLander-v3", 20, seed=10_000)) >= TARGET
            hit = hit and np.mean(train.evaluate(actor, "LunarLander-v3", 100, seed=20_000)) >= TARGET
            if hit:
                self.reached = {"wall": wall, "cpu": cpu, "steps": self.num_timesteps}
            self.wall, self.cpu = time.perf_counter() - wall, time.process_time() - cpu

        def _on_step(self) -> bool:
            return self.reached is None

    model = make_sb3_ppo(seed)
    callback = ConfirmedScore()
    model.learn(total_timesteps=SB3_BUDGET, callback=callback)
    reached = callback.reached or {"wall": math.nan, "cpu": math.nan, "steps": None}
    seconds = reached["wall"] if callback.reached else callback.clocks()[0]
    return {**reached, "sps": (reached["steps"] or model.num_timesteps) / seconds}


def cells(r: dict) -> str:
    if not r["steps"]:
        return f"not reached | not reached | - | {r['sps']:.0f}"
    return f"{r['wall']:.1f} | {r['cpu']:.1f} | {r['steps']:,} | {r['sps']:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4],
                        help="training seeds, one row each")
    args = parser.parse_args()
    try:
        import stable_baselines3
    except ImportError:
        print("error: stable-baselines3 is a benchmark-only dependency: "
              "pip install -r benchmarks/requirements.txt", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    train = load_train()
    print(f"torch {torch.__version__}, stable-baselines3 {stable_baselines3.__version__}, 1 thread; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    print("| seed | ours: wall s | ours: CPU s | ours: steps | ours: steps/s "
          "| SB3: wall s | SB3: CPU s | SB3: steps | SB3: steps/s | SB3/ours wall | SB3/ours CPU |")
    print("| --- " * 11 + "|")
    ratios = {"wall": [], "cpu": []}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours, sb3 = run_ours(train, seed, tmp), run_sb3(train, seed)
            for clock in ratios:
                ratios[clock].append(sb3[clock] / ours[clock])
            print(f"| {seed} | {cells(ours)} | {cells(sb3)} | "
                  f"{ratios['wall'][-1]:.1f}x | {ratios['cpu'][-1]:.1f}x |", flush=True)
    print(f"load average at end {os.getloadavg()[0]:.2f}")
    for clock, values in ratios.items():
        finite = [r for r in values if math.isfinite(r)]
        summary = f"min {min(finite):.1f}x, median {np.median(finite):.1f}x" if finite else "n/a"
        print(f"SB3 / ours, time to a confirmed greedy 200 ({clock}): {summary} "
              f"over {len(finite)}/{len(values)} "
              f"seeds where both reached it (bar: >= 3x on every seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
