"""Training: the shared loop and its parts, teacher training and distillation.

- :mod:`.task`: the contract between the loop and a kind of training.
- :mod:`.loop`: the shared loop (:func:`~.loop.run_training`).
- :mod:`.checkpoint`: checkpoints and the run signature a resume must match.
- :mod:`.runlog`: the JSONL run log.
- :mod:`.options`: the options every training shares, presets, the fit/val splits.
- :mod:`.teacher`, :mod:`.distill`: the two tasks; :mod:`.losses`, :mod:`.mining`,
  :mod:`.sampler`, :mod:`.distill_loss`: their parts.

Import the submodules you need (``from raml_cli.train.loop import run_training``);
this package imports nothing heavy by itself.
"""
