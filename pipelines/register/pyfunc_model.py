"""The registered adapter as an MLflow pyfunc model, logged as code with every version.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/raylora-demo@champion")
    model.predict(["What is 2 + 3?", "Reverse the word 'lamp'."])   # -> the generated answers

Whoever loads the model may never have seen raylora: MLflow runs this file where the model is loaded, so it
imports only what the model needs (mlflow, torch, transformers, peft) and nothing of raylora. That is why it
imports mlflow itself (its ``PythonModel`` base and ``set_model``), the one module besides pipelines/tracking.py
that does, and why it loads the adapter with plain PEFT rather than adapters.io (whose loading it mirrors: the
embeddings grow to the adapter's tokenizer first).

Artifacts: ``adapter`` (PEFT files and the tokenizer with the chat template it was trained with) and
``lineage``. model_config: ``base_model`` (a path or hub id), ``base_revision``, ``dtype``,
``quantization`` (BitsAndBytesConfig arguments, or null), ``trust_remote_code``, ``max_new_tokens``.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel

# a two-turn conversation every chat template renders; the first special token after its answer ends a turn
PROBE = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"}]


class AdapterModel(PythonModel):
    """The base model with the adapter applied; predict renders each prompt as one user turn with the chat
    template used in training and returns the greedy answer."""

    def load_context(self, context) -> None:  # noqa: ANN001 (MLflow's PythonModelContext)
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        config, adapter_dir = context.model_config, context.artifacts["adapter"]
        self.tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
        self.tokenizer.padding_side = "left"  # generation continues from the right end of every prompt
        quantization = config.get("quantization")
        base = AutoModelForCausalLM.from_pretrained(
            config["base_model"], revision=config.get("base_revision"), dtype=getattr(torch, config["dtype"]),
            quantization_config=BitsAndBytesConfig(**quantization) if quantization else None,
            trust_remote_code=config.get("trust_remote_code", False))
        if len(self.tokenizer) > base.get_input_embeddings().num_embeddings:  # the template added tokens
            base.resize_token_embeddings(len(self.tokenizer))
        self.model = PeftModel.from_pretrained(base, adapter_dir).eval()
        self.max_new_tokens = int(config["max_new_tokens"])
        self.stop_ids = self.end_of_turn_ids()

    def end_of_turn_ids(self) -> list[int]:
        """The token the template closes an answer with, and EOS: generation stops at either."""
        prompt = self.tokenizer.apply_chat_template(PROBE[:1], tokenize=False, add_generation_prompt=True)
        whole = self.tokenizer.apply_chat_template(PROBE, tokenize=False)
        tail = self.tokenizer(whole[len(prompt):], add_special_tokens=False)["input_ids"]
        special = set(self.tokenizer.all_special_ids) | {
            index for index, token in self.tokenizer.added_tokens_decoder.items() if token.special}
        closing = [token for token in tail if token in special][:1]
        return sorted({*closing, self.tokenizer.eos_token_id} - {None})

    def predict(self, model_input: list[str], params: dict | None = None) -> list[str]:
        import torch

        texts = [self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True) for prompt in model_input]
        encoded = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = self.model.generate(**encoded, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.stop_ids)
        answers = self.tokenizer.batch_decode(out[:, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
        return [answer.strip() for answer in answers]


mlflow.models.set_model(AdapterModel())
