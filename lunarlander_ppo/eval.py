"""Evaluate a PPO checkpoint: a table of returns, optional JSON, GIF or window.

    python lunarlander_ppo/eval.py --episodes 100 --seed 424242 --json
    python lunarlander_ppo/eval.py --episodes 1 --seed 3 --gif lunarlander_ppo/landing.gif

The checkpoint records its env (the id, continuous or not, wind or not, --env-kwargs, the network width), so
the same command evaluates any checkpoint written by train.py, and refuses one whose networks do not fit it.
Episode i is reset with seed S+i.
"""
import argparse
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (SHIPPED_WEIGHTS, Parser, can_write_in, check_fits_env, evaluate,  # noqa: E402
                   load_checkpoint, make_env, to_env_actions)


def parse_args(argv=None) -> argparse.Namespace:
    """Every flag is checked here, before the weights load or an episode runs: an error is one line."""
    parser = Parser("Evaluate a PPO checkpoint written by lunarlander_ppo/train.py.")
    parser.add_argument("--weights", default=str(SHIPPED_WEIGHTS), help="checkpoint to load")
    parser.add_argument("--episodes", type=int, default=10, help="number of episodes")
    parser.add_argument("--seed", type=int, default=0, help="episode i is reset with seed+i")
    parser.add_argument("--sample", action="store_true",
                        help="sample actions instead of taking the most likely one")
    parser.add_argument("--json", action="store_true",
                        help='print {"mean_return", "std_return", "episodes", ...} as the last line')
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
def play(agent, ckpt: dict, seed: int, greedy: bool, render_mode: str) -> tuple[float, list]:
    """One episode in a single env with rendering; return its return and the rgb frames (if any)."""
    env = make_env(ckpt["env_id"], ckpt["continuous"], ckpt["wind"], ckpt["env_kwargs"], render_mode)
    obs, _ = env.reset(seed=seed)
    frames, total, done = [], 0.0, False
    while not done:
        if render_mode == "rgb_array":
            frames.append(with_wind(env.render(), env.unwrapped) if ckpt["wind"] else env.render())
        action, _ = agent.act(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0), greedy=greedy)
        obs, reward, terminated, truncated, _ = env.step(to_env_actions(action, env.action_space)[0])
        total += reward
        done = terminated or truncated
    if render_mode == "rgb_array":
        frames.append(env.render())
    env.close()
    return total, frames


def with_wind(frame: np.ndarray, lander) -> np.ndarray:
    """The frame with an arrow for the wind the next step pushes the lander with (the renderer draws none):
    LunarLander's force tanh(sin(0.02 k) + sin(0.01 pi k)) * wind_power, k its wind index. No wind acts
    once a leg touches the ground."""
    from PIL import Image, ImageDraw

    k = lander.wind_idx
    force = math.tanh(math.sin(0.02 * k) + math.sin(math.pi * 0.01 * k)) * lander.wind_power
    if lander.legs[0].ground_contact or lander.legs[1].ground_contact:
        force = 0.0
    image = Image.fromarray(frame)
    draw, (x, y) = ImageDraw.Draw(image), (image.width // 2, 40)
    end = x + int(force / lander.wind_power * 150)  # full power: 150 pixels
    draw.line([(x, y), (end, y)], fill=(255, 80, 0), width=6)
    if end != x:
        tip = 14 if end > x else -14
        draw.polygon([(end + tip, y), (end, y - 10), (end, y + 10)], fill=(255, 80, 0))
    draw.text((x, y + 14), f"wind {force:+.1f} (power {lander.wind_power:g})", fill=(255, 255, 255),
              font_size=26, anchor="ma")
    return np.asarray(image)


def write_gif(frames: list, path: Path, every: int = 2) -> None:
    from PIL import Image

    images = [Image.fromarray(f).resize((300, 200)) for f in frames[::every]]
    if path.exists():
        print(f"replacing {path} (a GIF) as asked by --gif", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(path, save_all=True, append_images=images[1:], duration=20 * every, loop=0)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    try:
        agent, ckpt = load_checkpoint(args.weights)
        check_fits_env(agent, ckpt, args.weights)  # its env may need a missing package
    except ValueError as err:
        print(f"error: --weights: {err}", file=sys.stderr)
        return 1
    greedy = not args.sample
    if args.render:
        for i in range(args.episodes):
            play(agent, ckpt, args.seed + i, greedy, "human")
    if args.gif:
        total, frames = play(agent, ckpt, args.seed, greedy, "rgb_array")
        write_gif(frames, Path(args.gif))
        print(f"wrote {args.gif} (episode with seed {args.seed}, return {total:.1f})")

    returns = evaluate(agent, ckpt["env_id"], args.episodes, args.seed, greedy=greedy,
                       continuous=ckpt["continuous"], wind=ckpt["wind"], extra=ckpt["env_kwargs"])
    print(f"{'episode':>7}  {'seed':>8}  {'return':>8}")
    for i, ret in enumerate(returns):
        print(f"{i:7d}  {args.seed + i:8d}  {ret:8.1f}")
    mean, std = float(np.mean(returns)), float(np.std(returns))
    print(f"mean {mean:.1f} +/- {std:.1f} (min {min(returns):.1f}) over {args.episodes} "
          f"{'sampled' if args.sample else 'greedy'} episodes of {ckpt['env_id']}")
    if args.json:
        print(json.dumps({"min_return": min(returns),
                          "episodes_at_least_200": int(sum(r >= 200 for r in returns)),
                          "std_return": std, "episodes": args.episodes, "mean_return": mean}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    sys.exit(main())
