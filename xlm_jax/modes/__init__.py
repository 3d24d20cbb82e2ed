"""One module per `--mode` (train, evaluate, export_hf, plan, study, train_tokenizer), and the run
they prepare (prepare.py): the top of the layers (docs/architecture.md). main.py maps each mode
to its module's `main(config, workdir, flags)`; nothing below imports a mode.
"""
