"""Post-training the explained model on its own clean cases (``failtrace finetune``), with trl, on CPU.

* :mod:`~failtrace.training.data`: training examples (token ids + attribution weights) from a store's clean cases,
  and the seeded held-out split;
* :mod:`~failtrace.training.weighted_dpo`: the one piece written here, trl's DPO with per-token weights on the
  log-ratio terms (token-dpo);
* :mod:`~failtrace.training.checkpoints`: plain transformers checkpoint folders with failtrace's metadata;
* :mod:`~failtrace.training.finetune`: the run (SFT / DPO / token-dpo through trl's trainers);
* :mod:`~failtrace.training.compare`: ``failtrace compare --checkpoints``, the base model's cases re-scored on
  each checkpoint (rows in the ``comparisons`` table with step and split).

Data flows one way: store (cases) → examples → trainer → checkpoint folders → comparison rows. This package reads
the cases stage (:mod:`failtrace.cases`), which never imports it.
"""
