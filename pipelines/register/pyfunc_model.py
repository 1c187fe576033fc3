"""The registered adapter as an MLflow pyfunc model, logged as code with every version.

    import mlflow
    model = mlflow.pyfunc.load_model("models:/raylora-demo@champion")
    model.predict(["What is 2 + 3?", "Reverse the word 'lamp'."])   # -> the generated answers

Whoever loads the model may never have seen raylora: MLflow runs this file where the model is loaded, so it
imports only what the model needs (mlflow, torch, transformers, peft) and nothing of raylora. That is why it
imports mlflow itself (its ``PythonModel`` base and ``set_model``), the one module besides pipelines/tracking.py
that does. It loads and answers through adapters/generation.py, as `raylora generate` does: that file is
shipped with the model (``code_paths``, on ``sys.path`` when MLflow loads it), so it is imported by its own name.

Artifacts: ``adapter`` (PEFT files and the tokenizer with the chat template it was trained with; under
``adapter.method: full`` the whole fine-tuned model, which loads without the base) and ``lineage``. model_config: ``base_model`` (a path or hub id), ``base_revision``, ``dtype``,
``quantization`` (BitsAndBytesConfig arguments, or null), ``trust_remote_code``, ``max_new_tokens``.
"""

from __future__ import annotations

import mlflow
from mlflow.pyfunc import PythonModel


class AdapterModel(PythonModel):
    """The base model with the adapter applied; predict renders each prompt as one user turn with the chat
    template used in training and returns the greedy answer."""

    def load_context(self, context) -> None:  # noqa: ANN001 (MLflow's PythonModelContext)
        import torch
        from generation import load_adapter_model  # adapters/generation.py, shipped with the model
        from transformers import BitsAndBytesConfig

        config = context.model_config
        quantization = config.get("quantization")
        self.model, self.tokenizer = load_adapter_model(
            config["base_model"], context.artifacts["adapter"], revision=config.get("base_revision"),
            dtype=getattr(torch, config["dtype"]),
            quantization=BitsAndBytesConfig(**quantization) if quantization else None,
            trust_remote_code=config.get("trust_remote_code", False))
        self.max_new_tokens = int(config["max_new_tokens"])

    def predict(self, model_input: list[str], params: dict | None = None) -> list[str]:
        from generation import generate_answers

        return generate_answers(self.model, self.tokenizer, list(model_input), max_new_tokens=self.max_new_tokens)


mlflow.models.set_model(AdapterModel())
