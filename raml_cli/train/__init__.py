"""Training: the shared loop (:mod:`.loop`), teacher training and distillation.

Import the submodules you need (``from raml_cli.train.loop import run_training``);
this package imports nothing heavy by itself.
"""
