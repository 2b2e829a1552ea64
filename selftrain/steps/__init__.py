"""Training steps, one module per method family: what `selftrain.train.fit` runs one batch at a time.

`supervised` (the teacher, MPL's finetune), `pseudo_label` (Noisy Student and distillation: joint labeled +
pseudo-labeled batches under any loss of selftrain.losses), `mpl` (Meta Pseudo Labels and reduced MPL). The
method registry (selftrain.methods) names each method's step.
"""
