"""LoRA fine-tuning, evaluation, tracking and serving of a small LLM (see the project README)."""
