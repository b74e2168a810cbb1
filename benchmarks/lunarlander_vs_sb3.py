"""Wall-clock to a greedy 200 on LunarLander-v3: our PPO against Stable-Baselines3's, same machine, one go.

    pip install -r benchmarks/requirements.txt
    python benchmarks/lunarlander_vs_sb3.py --seeds 0 1 2 3 4     # about 20-30 minutes

Protocol, identical for both:
- one torch thread each, run one after the other on the same machine;
- every 32,768 environment steps, 20 greedy episodes (seeds 10000-10019); when their mean reaches 200,
  100 more greedy episodes (seeds 20000-20099) confirm it; the time to score is the training wall-clock
  at the first confirmed check, evaluation time excluded (the clock pauses while evaluating);
- SB3 uses the rl-baselines3-zoo hyperparameters for LunarLander (16 envs, n_steps 1024, batch 64,
  4 epochs, gamma 0.999, gae_lambda 0.98, ent_coef 0.01) and stops at 1M steps;
  ours uses lunarlander_ppo/train.py's defaults.
Both are evaluated by the same function (`evaluate` in lunarlander_ppo/train.py).
"""
import argparse
import contextlib
import importlib.util
import io
import math
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
    args = train.Args(seed=seed, eval_every=EVAL_EVERY, eval_episodes=20, stop_score=TARGET, out=f"{tmp}/ours_s{seed}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        summary = train.train(args)
    reached = summary["reached"]
    return {"seconds": reached["train_seconds"] if reached else math.nan,
            "steps": reached["global_step"] if reached else None, "sps": summary["global_step"] / summary["train_seconds"]}


class SB3Actor:
    """Lets `evaluate` drive an SB3 model: the same interface as our Agent.act."""

    def __init__(self, model):
        self.model = model

    def act(self, obs: torch.Tensor, greedy: bool = True):
        actions, _ = self.model.predict(obs.numpy(), deterministic=greedy)
        return torch.as_tensor(actions), None


def run_sb3(train, seed: int) -> dict:
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    class ConfirmedScore(BaseCallback):
        """Pauses the clock to evaluate every EVAL_EVERY steps; stops training at a confirmed 200."""

        def _on_training_start(self):
            self.start, self.eval_seconds, self.next_eval, self.reached = time.perf_counter(), 0.0, EVAL_EVERY, None

        def _on_step(self) -> bool:
            if self.num_timesteps < self.next_eval:
                return True
            self.next_eval += EVAL_EVERY
            tick = time.perf_counter()
            clock = tick - self.start - self.eval_seconds  # training time so far, evaluations excluded
            actor = SB3Actor(self.model)
            hit = np.mean(train.evaluate(actor, "LunarLander-v3", 20, seed=10_000)) >= TARGET
            hit = hit and np.mean(train.evaluate(actor, "LunarLander-v3", 100, seed=20_000)) >= TARGET
            self.eval_seconds += time.perf_counter() - tick
            if hit:
                self.reached = (self.num_timesteps, clock)
            return not hit

        def train_seconds(self) -> float:
            return time.perf_counter() - self.start - self.eval_seconds

    env = make_vec_env("LunarLander-v3", n_envs=16, seed=seed)
    model = PPO("MlpPolicy", env, n_steps=1024, batch_size=64, n_epochs=4, gamma=0.999, gae_lambda=0.98,
                ent_coef=0.01, seed=seed, device="cpu", verbose=0)
    callback = ConfirmedScore()
    model.learn(total_timesteps=SB3_BUDGET, callback=callback)
    if callback.reached:
        steps, seconds = callback.reached
        return {"seconds": seconds, "steps": steps, "sps": steps / seconds}
    return {"seconds": math.nan, "steps": None, "sps": model.num_timesteps / callback.train_seconds()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        print("error: stable-baselines3 is a benchmark-only dependency: pip install -r benchmarks/requirements.txt", file=sys.stderr)
        return 1
    torch.set_num_threads(1)
    train = load_train()

    print("| seed | ours: s to 200 | ours: steps | ours: steps/s | SB3: s to 200 | SB3: steps | SB3: steps/s | ratio SB3 / ours |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            ours, sb3 = run_ours(train, seed, tmp), run_sb3(train, seed)
            ratio = sb3["seconds"] / ours["seconds"]
            ratios.append(ratio)

            def cell(r):
                return (f"{r['seconds']:.1f} | {r['steps']}" if r["steps"] else "not reached | -") + f" | {r['sps']:.0f}"

            print(f"| {seed} | {cell(ours)} | {cell(sb3)} | {ratio:.1f}x |", flush=True)
    finite = [r for r in ratios if math.isfinite(r)]
    print(f"\nratio SB3 time / our time to a confirmed greedy 200: median {np.median(finite) if finite else math.nan:.1f}x "
          f"over {len(finite)}/{len(ratios)} seeds where both reached it (bar: >= 3x on every seed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
