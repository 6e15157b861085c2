"""Item Generation Expert: LoRA fine-tuning on mined hard negatives (train-item) and decoding (generate)."""
