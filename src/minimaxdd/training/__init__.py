"""Training: the shared loop (`loop`), training from scratch (`scratch`), fine-tuning (`finetune`)
and the Minimax criteria it adds (`minimax`)."""
