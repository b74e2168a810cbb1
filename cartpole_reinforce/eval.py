"""Evaluate a REINFORCE CartPole policy: a table of returns, optional JSON, GIF or window.

    python cartpole_reinforce/eval.py --episodes 100 --seed 12345 --json
    python cartpole_reinforce/eval.py --episodes 1 --gif cartpole_reinforce/cartpole.gif

Episode i is reset with seed S+i, so the same command gives the same numbers.
"""
import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import SHIPPED_WEIGHTS, Parser, can_write_in, evaluate, load_policy, make_env  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    """Every flag is checked here, before the weights load or an episode runs: an error is one line."""
    parser = Parser("Evaluate a CartPole-v1 REINFORCE policy.")
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="state_dict to load")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i")
    parser.add_argument("--sample", action="store_true",
                        help="sample actions instead of taking the most likely one")
    parser.add_argument("--json", action="store_true",
                        help='print {"mean_return", "std_return", "episodes"} as the last line')
    parser.add_argument("--gif", default="",
                        help="record the first episode to this .gif file (a new one, or a GIF to replace)")
    parser.add_argument("--render", action="store_true",
                        help="show the episodes in a window (needs a display)")
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"--episodes must be a positive number, got {args.episodes}")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more (Gymnasium's seeds), got {args.seed}")
    if args.render and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        parser.error("--render needs a display; use --gif PATH to record the episode instead")
    needs = (("--gif", "PIL", "pillow"), ("--gif", "pygame", "pygame"), ("--render", "pygame", "pygame"))
    for flag, module, package in needs:
        if getattr(args, flag[2:]) and importlib.util.find_spec(module) is None:
            parser.error(f"{flag} needs {module}, which is not installed: pip install {package}")
    if args.gif:
        try:
            check_gif(Path(args.gif))
        except ValueError as err:
            parser.error(str(err))
    return args


def check_gif(path: Path) -> None:
    """--gif names a new .gif file, or an existing GIF (then replaced); anything else is never overwritten."""
    if path.suffix.lower() != ".gif":
        raise ValueError(f"--gif {path} must end in .gif")
    if path.exists() and not path.is_file():
        raise ValueError(f"--gif {path} exists and is not a file; name a .gif file")
    if path.is_file():
        with path.open("rb") as fh:
            if fh.read(4) != b"GIF8":
                raise ValueError(f"--gif {path} exists and is not a GIF; it is never overwritten")
    if not can_write_in(path.parent):
        raise ValueError(f"--gif {path} cannot be created (its folder cannot be made or written)")


@torch.no_grad()
def record_gif(policy, path: Path, seed: int, greedy: bool, every: int = 2) -> int:
    """Play one episode with rgb_array rendering and write every `every`-th frame to a GIF."""
    from PIL import Image

    env = make_env(render_mode="rgb_array")
    obs, _ = env.reset(seed=seed)
    frames, done, total = [env.render()], False, 0.0
    while not done:
        action, _ = policy.act(obs, greedy)
        obs, reward, terminated, truncated, _ = env.step(action)
        total += reward
        done = terminated or truncated
        frames.append(env.render())
    env.close()
    images = [Image.fromarray(f).resize((300, 200)) for f in frames[::every]]
    if path.exists():
        print(f"replacing {path} (a GIF) as asked by --gif", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=40 * every, loop=0)
    return int(total)


@torch.no_grad()
def render_window(policy, episodes: int, seed: int, greedy: bool) -> None:
    env = make_env(render_mode="human")
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, _, terminated, truncated, _ = env.step(policy.act(obs, greedy)[0])
            done = terminated or truncated
    env.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        policy = load_policy(args.weights)
    except ValueError as err:
        print(f"error: --weights: {err}", file=sys.stderr)
        return 1
    greedy = not args.sample
    if args.render:
        render_window(policy, args.episodes, args.seed, greedy)
    if args.gif:
        total = record_gif(policy, Path(args.gif), args.seed, greedy)
        print(f"wrote {args.gif} (episode with seed {args.seed}, return {total})")

    returns = evaluate(policy, args.episodes, args.seed, greedy=greedy)
    print(f"{'episode':>7}  {'seed':>8}  {'return':>7}")
    for i, ret in enumerate(returns):
        print(f"{i:7d}  {args.seed + i:8d}  {ret:7.1f}")
    mean, std = float(np.mean(returns)), float(np.std(returns))
    print(f"mean {mean:.1f} +/- {std:.1f} over {args.episodes} "
          f"{'sampled' if args.sample else 'greedy'} episodes")
    if args.json:
        print(json.dumps({"mean_return": mean, "std_return": std, "episodes": args.episodes}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    sys.exit(main())
