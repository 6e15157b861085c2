"""Query Expert: grounded teacher pseudo-queries (distill), the LoRA student (train-query), rewriting (rewrite)."""
