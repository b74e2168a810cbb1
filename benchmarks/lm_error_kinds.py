"""Where do the LM models go wrong on the unseen word problems? Each wrong greedy answer, by kind.

    python benchmarks/lm_error_kinds.py --adapter grpo_lm/adapter_from_sft --unseen 400 --threads 2
    python benchmarks/lm_error_kinds.py --adapter ppo_rlhf_math/ppo_adapter \
        --init-adapter ppo_rlhf_math/sft_adapter --unseen 400 --threads 2

Takes grpo_lm/eval.py's flags (the same model, adapter and problems) and sorts its wrong answers with
ppo_rlhf_math's `first_slip` rule: "slip" (a line of work whose result its own numbers do not give, or a final
number that is not the last result), "set-up" (every line right, but the wrong numbers or operations for the
question), "format" (no final '#### <number>'). The last line is JSON; ~3-4 minutes a model for 400 problems.
"""
import importlib.util
import json
import sys
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def load(folder: str, stem: str):
    sys.path.insert(0, str(REPO / folder))  # grpo_lm/eval.py imports its train.py by name
    spec = importlib.util.spec_from_file_location(f"{folder}_{stem}", REPO / folder / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.path.pop(0)
    return module


def main() -> None:
    ev, rule = load("grpo_lm", "eval"), load("ppo_rlhf_math", "train")
    args = ev.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = ev.load_policy(args)
    held = {p["question"] for p in ev.heldout_problems(200)}
    problems = (ev.heldout_problems(args.unseen, ev.UNSEEN_SEED, held, names=ev.UNSEEN_NAMES,
                                    items=ev.UNSEEN_ITEMS) if args.unseen
                else ev.heldout_problems(args.n, args.problem_seed))  # as grpo_lm/eval.py draws them
    metrics, texts = ev.evaluate(model, tokenizer, problems, args.max_new_tokens, args.batch_size)
    kinds = Counter()
    for problem, text in zip(problems, texts):
        answer = ev.extract_answer(text)
        if answer == problem["answer"]:
            continue
        kinds["format" if answer is None else "slip" if rule.first_slip(text) is not None else "set-up"] += 1
    result = {"accuracy": metrics["accuracy"], "n": len(problems), "wrong": sum(kinds.values()), **kinds}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
