"""Where Stable-Baselines3's PPO spends its time on LunarLander-v3, per 65,536 environment steps.

    pip install -r benchmarks/requirements.txt
    python benchmarks/lunarlander_sb3_time_split.py --steps 330000     # about 2-3 minutes

Same rl-baselines3-zoo hyperparameters and thread setting as benchmarks/lunarlander_vs_sb3.py. Prints, per
block of 65,536 steps, the seconds spent in the policy updates, in collecting rollouts, and, inside the
latter, in the vectorised env's step (Box2D physics). It shows why SB3's steps/s in the benchmark table
are far below its speed in the first 100k steps.
"""
import argparse
import sys
import time


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=330_000, help="environment steps to train for")
    parser.add_argument("--seed", type=int, default=3, help="training seed")
    args = parser.parse_args()
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        print("error: stable-baselines3 is a benchmark-only dependency: "
              "pip install -r benchmarks/requirements.txt", file=sys.stderr)
        return 1
    import torch
    from lunarlander_vs_sb3 import make_sb3_ppo
    torch.set_num_threads(1)
    model = make_sb3_ppo(args.seed)
    env = model.get_env()
    clock = {"update": 0.0, "rollout": 0.0, "env.step": 0.0}

    def timed(fn, key):
        def wrapper(*a, **k):
            tick = time.perf_counter()
            result = fn(*a, **k)
            clock[key] += time.perf_counter() - tick
            return result
        return wrapper

    env.step_wait = timed(env.step_wait, "env.step")
    model.train = timed(model.train, "update")
    collect = timed(model.collect_rollouts, "rollout")

    def collect_and_report(*a, **k):
        result = collect(*a, **k)
        if model.num_timesteps % 65_536 == 0:
            total = clock["update"] + clock["rollout"]
            print(f"steps {model.num_timesteps - 65_536:>7,}-{model.num_timesteps:<7,}: "
                  f"{65_536 / total:5.0f} steps/s; "
                  + ", ".join(f"{k} {v:.1f} s" for k, v in clock.items()), flush=True)
            clock.update(dict.fromkeys(clock, 0.0))
        return result

    model.collect_rollouts = collect_and_report
    model.learn(total_timesteps=args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
