"""Answer prompts with a trained adapter (or a full fine-tuned model): the base and the adapter loaded with plain
transformers and PEFT, each prompt rendered as one user turn by the chat template the adapter was trained with,
greedy unless told otherwise.

    from adapters.generation import generate_answers, load_adapter_model
    model, tokenizer = load_adapter_model("meta-llama/Llama-3.1-8B-Instruct", "run/adapter", dtype=torch.bfloat16)
    generate_answers(model, tokenizer, ["What is 2 + 3?"], max_new_tokens=64)   # -> ["5"]

`raylora generate` and every registered model (pipelines/register/pyfunc_model.py) answer through these two
functions. A registered model ships this file beside its code (MLflow's code_paths) and loads where raylora is
not installed, so it imports only torch, transformers and peft.
"""

from __future__ import annotations

from pathlib import Path

import torch
from peft import PeftModel
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

# a two-turn conversation every chat template renders; the first special token after its answer ends a turn
PROBE = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]


def load_adapter_model(base_model: str, adapter_dir: str | Path, *, revision: str | None = None,
                       dtype: torch.dtype = torch.float32, quantization: BitsAndBytesConfig | None = None,
                       trust_remote_code: bool = False) -> tuple[PeftModel | PreTrainedModel, PreTrainedTokenizerBase]:
    """The base (a path or hub id; 4-bit when ``quantization`` is given) with the adapter applied, in eval mode,
    on the GPU when there is one; and the tokenizer saved with the adapter (its chat template).

    A directory without ``adapter_config.json`` but with a model's ``config.json`` holds a full fine-tuned model
    (``adapter.method: full``): it loads as it is, a plain transformers model, and ``base_model`` is not read."""
    tokenizer = AutoTokenizer.from_pretrained(str(adapter_dir))
    device_map = "cuda" if torch.cuda.is_available() else None
    if is_full_model_dir(adapter_dir):
        model = AutoModelForCausalLM.from_pretrained(str(adapter_dir), dtype=dtype,
                                                     trust_remote_code=trust_remote_code, device_map=device_map)
        return model.eval(), tokenizer
    base = AutoModelForCausalLM.from_pretrained(
        base_model, revision=revision, dtype=dtype, quantization_config=quantization,
        trust_remote_code=trust_remote_code, device_map=device_map)
    if quantization is not None:
        keep_4bit_layout(base)  # the 4-bit layout the adapter was trained on, on CPUs with AVX512-BF16 too
    if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # the template added tokens
        base.resize_token_embeddings(len(tokenizer))
    return PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tokenizer


def keep_4bit_layout(model: torch.nn.Module) -> None:
    """Keep bitsandbytes' standard 4-bit layout on CPU.

    On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit weight into a CPU-only layout (and a bf16
    quant state) at its first no-grad forward in eval mode. Everything that dequantises the weight
    afterwards (PEFT's DoRA weight norm, merging, LoftQ) then reads garbage, and the eval logits differ
    from the training ones. Turning the repacking off keeps one layout everywhere, as on GPU; a weight
    already repacked is unpacked by bitsandbytes itself: ``Linear4bit`` unpacks it in place whenever it saves
    its state (the same inverse its ``Params4bit.cuda`` uses), so asking for the state dict is enough.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
            if getattr(module.weight.quant_state, "packing_format_for_cpu", False):
                module.state_dict()


def is_full_model_dir(path: str | Path) -> bool:
    """A full fine-tuned model's directory (``adapters.io.save_full_model``; any ``save_pretrained``): a model
    config and no adapter config."""
    return (Path(path) / "config.json").is_file() and not (Path(path) / "adapter_config.json").is_file()


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The token the template closes an answer with, and EOS: generation stops at either."""
    prompt = tokenizer.apply_chat_template(PROBE[:1], tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(PROBE, tokenize=False)
    tail = tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"]
    special = set(tokenizer.all_special_ids) | {
        index for index, token in tokenizer.added_tokens_decoder.items() if token.special}
    closing = [token for token in tail if token in special][:1]
    return sorted({*closing, tokenizer.eos_token_id} - {None})


@torch.no_grad()
def generate_answers(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: list[str], *,
                     max_new_tokens: int, temperature: float = 0.0, batch_size: int = 8) -> list[str]:
    """Each prompt as one user turn through the chat template, answered greedily (``temperature`` > 0 samples),
    ``batch_size`` prompts at a time; the answers stripped of the template's closing tokens and whitespace."""
    tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
    stop_ids = end_of_turn_ids(tokenizer)
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    answers = []
    for start in range(0, len(prompts), batch_size):
        texts = [tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                               add_generation_prompt=True)
                 for prompt in prompts[start:start + batch_size]]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        out = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=stop_ids, **sampling)
        decoded = tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        answers.extend(answer.strip() for answer in decoded)
    return answers
