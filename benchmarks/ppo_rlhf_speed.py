"""ppo_rlhf_math under bf16 autocast against its fp32 path: seconds of the parts of a PPO step and of a
reward-model step, and what bf16 does to the numbers. Run it alone on the machine.

    python benchmarks/ppo_rlhf_speed.py                  # 2 threads; greedy check on 50 held-out problems
    python benchmarks/ppo_rlhf_speed.py --eval-size 0    # timings only (a few minutes with avx512_bf16;
                                                         # over 10 on a CPU without it, where bf16 crawls)

Issue 25 asks whether bf16 autocast (torch.autocast("cpu", torch.bfloat16); fast on CPUs with avx512_bf16
or AMX) buys time. Two ways to run each part, with train.py's defaults and functions:
  fp32    what train.py does
  bf16    the same passes under bf16 autocast (policy_forward's log-softmax stays fp32)
(Commit 240610b's version also timed train.py's speed path, removed since: ppo_rlhf_math/NOTES.md 20-21.)
PPO (the shipped policy: SFT merged + ppo_adapter on the top 10 blocks): sampling the rollout (temperature 1;
the same seed for fp32 and bf16), the no-grad pass for old log-probs and values over the rollout (a step runs
it twice: policy and reference), one forward and backward of a minibatch (a step runs it
PPO_EPOCHS x rollout / minibatch = 4 times). Reward model (fresh weights; the time does not depend on them):
one forward and backward of a batch of each phase, the mean over --rm-repeats batches. Each part runs once
before it is timed. Accuracy of bf16: its log-probs of the fp32 rollout against fp32's (largest and mean
difference over real tokens) and greedy held-out accuracy of both. Prints a table, then one JSON line.
"""
import argparse
import contextlib
import importlib.util
import json
import random
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
FOLDER = REPO / "ppo_rlhf_math"
WAYS = ("fp32", "bf16")


def load_train():
    spec = importlib.util.spec_from_file_location("ppo_rlhf_math_train", FOLDER / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    return train


def precision(way: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if way == "bf16" else contextlib.nullcontext()


def seconds(fn, repeats: int = 1) -> float:
    fn()  # warm-up: the first pass allocates and picks kernels
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return round((time.perf_counter() - t0) / repeats, 3)


def ppo_parts(train, config, args) -> dict:
    """Seconds of sampling, the no-grad pass and a minibatch's forward and backward; bf16's log-prob error."""
    from peft import PeftModel
    base, tokenizer = train.load_base("")
    policy = PeftModel.from_pretrained(train.merge_adapter(base, FOLDER / "sft_adapter"),
                                       str(FOLDER / "ppo_adapter"), is_trainable=True)
    value_head = torch.nn.Linear(base.config.hidden_size, 1)
    value_head.load_state_dict(torch.load(FOLDER / "ppo_adapter" / "value_head.pt", weights_only=True))
    rng = random.Random(args.seed)
    problems = [train.make_problem(rng) for _ in range(config.rollout_size)]

    def sample(way):
        torch.manual_seed(args.seed)
        with precision(way):
            return train.rollout(policy, tokenizer, problems, config)

    rows = {way: {} for way in WAYS}
    with contextlib.redirect_stdout(sys.stderr):
        for way in WAYS:
            rows[way]["ppo_sample"] = seconds(lambda: sample(way))
    batch, logps = sample("fp32"), {}

    def no_grad_pass(way):
        with torch.no_grad(), precision(way):
            logps[way] = train.policy_forward(policy, value_head, batch, config.temperature)[0]

    def forward_backward(way):
        mini = {k: v[:config.minibatch_size] for k, v in batch.items()}
        m = mini["mask"].float()
        with precision(way):
            logp, values, _ = train.policy_forward(policy, value_head, mini, config.temperature)
            loss = -(logp * m).sum() / m.sum() + (values * m).pow(2).sum() / m.sum()
        loss.backward()
        policy.zero_grad(set_to_none=True)
        value_head.zero_grad(set_to_none=True)

    for way in WAYS:
        rows[way]["ppo_no_grad_pass"] = seconds(lambda: no_grad_pass(way))
        rows[way]["ppo_forward_backward"] = seconds(lambda: forward_backward(way))
        diff = (logps[way] - logps["fp32"])[batch["mask"].bool()].abs()
        rows[way]["logp_max_diff"], rows[way]["logp_mean_diff"] = (round(diff.max().item(), 5),
                                                                   round(diff.mean().item(), 6))
    if args.eval_size:
        heldout, width = train.heldout_problems(args.eval_size), config.max_new_tokens
        for way in WAYS:
            with precision(way), contextlib.redirect_stdout(sys.stderr):
                metrics, _ = train.evaluate(policy, tokenizer, heldout, width, config.batch_size)
            rows[way]["greedy_accuracy"] = metrics["accuracy"]
    return rows


def reward_parts(train, args) -> dict:
    """Seconds of one forward and backward of each phase's batch, as train_reward_model builds them."""
    torch.manual_seed(args.seed)
    rm, rng = train.RewardModel(), random.Random(args.seed)

    def encoded(phase: str):  # arithmetic: bare solutions; warmup: bare pairs; pairs: with questions
        problems = [train.split_solution(train.make_problem(rng)) for _ in range(train.RM_BATCH[phase])]
        solutions = [p["solution"] for p in problems]
        if phase == "arithmetic":
            return train.encode_for_reward([None] * len(problems), solutions)
        questions = [None] * 2 * len(problems) if phase == "warmup" else [p["question"] for p in problems] * 2
        rejected = [train.perturb_solution(p, rng) for p in problems]
        return train.encode_for_reward(questions, solutions + rejected)

    phases = {f"rm_{phase}": encoded(phase) for phase in ("arithmetic", "warmup", "pairs")}
    rows = {way: {} for way in WAYS}
    for phase, (ids, segments, positions, places, _) in phases.items():
        for way in WAYS:
            def step():
                with precision(way):
                    hidden = rm.hidden(ids, segments, positions, places)
                    loss = rm.head(hidden).float().mean() + rm.next_char_loss(hidden, ids, segments)
                loss.backward()
                rm.zero_grad(set_to_none=True)
            rows[way][phase] = seconds(step, args.rm_repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--eval-size", type=int, default=50, help="held-out problems, greedy (0: skip)")
    parser.add_argument("--rm-repeats", type=int, default=20, help="reward-model batches timed per phase")
    parser.add_argument("--seed", type=int, default=1, help="seed of the problems and the sampling")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train = load_train()
    config = train.Args()
    ppo, reward = ppo_parts(train, config, args), reward_parts(train, args)
    rows = {way: {**ppo[way], **reward[way]} for way in WAYS}
    columns = list(rows["fp32"])
    print(f"{'':8}" + "".join(f"{c:>22}" for c in columns))
    for way, row in rows.items():
        print(f"{way:8}" + "".join(f"{row[c]:>22}" for c in columns))
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").exists() else []
    print(json.dumps({"threads": args.threads, "avx512_bf16": "avx512_bf16" in flags,
                      "rollout_size": config.rollout_size, "minibatch_size": config.minibatch_size, **rows}))


if __name__ == "__main__":
    main()
