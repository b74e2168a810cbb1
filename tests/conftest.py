"""Shared test helpers.

Every folder of the course has its own ``train.py``, so scripts are loaded by path under a
unique module name (``<folder>_<stem>``) instead of being imported as packages.
"""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Tests never draw windows and never reach a model hub.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def load_script(folder: str, stem: str = "train"):
    """Import ``<folder>/<stem>.py`` as module ``<folder>_<stem>`` (cached in sys.modules)."""
    name = f"{folder}_{stem}"
    if name in sys.modules:
        return sys.modules[name]
    path = REPO / folder / f"{stem}.py"
    # eval.py / play.py do ``from train import ...``: point ``train`` at THIS folder's train.py while they
    # load (another folder's may be cached under that name), and leave no plain ``train`` behind.
    siblings = {"train": load_script(folder, "train")} if stem != "train" else {}
    if stem == "play":
        siblings["eval"] = load_script(folder, "eval")
    saved = {k: sys.modules.pop(k) for k in list(siblings) if k in sys.modules}
    sys.modules.update(siblings)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        for k in siblings:
            sys.modules.pop(k, None)
        sys.modules.update(saved)
    return module


CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                 "{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_tokenizer(path):
    """Character-level tokenizer with SmolLM2's special tokens and chat markers, pad == eos as in SmolLM2.
    With a tiny random Llama it stands in for the real model in the LM tests (nothing is downloaded)."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast
    specials = ["<unk>", "<|im_start|>", "<|im_end|>"]
    chars = [chr(i) for i in range(32, 127)] + ["\n"]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(specials + chars)}, merges=[],
                               unk_token="<unk>"))
    tok.add_special_tokens(specials)
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<|im_start|>",
                                        eos_token="<|im_end|>", pad_token="<|im_end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(path)
    return tokenizer


def tiny_llama_config(tokenizer) -> dict:
    """LlamaConfig arguments of a 2-layer, 32-wide model for the tiny tokenizer."""
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, bos_token_id=1,
                eos_token_id=2, pad_token_id=2)


def save_tiny_models(root: Path) -> None:
    """A tiny random causal LM in root/lm on the tiny tokenizer: the stand-in for SmolLM2."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    tokenizer = save_tiny_tokenizer(root / "lm")
    config = tiny_llama_config(tokenizer)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**config)).save_pretrained(root / "lm")


@pytest.fixture
def repo() -> Path:
    return REPO
