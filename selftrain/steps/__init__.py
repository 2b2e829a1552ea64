"""What every training step shares: the supervised step (the teacher; MPL's finetune; Noisy Student's base) and
the per-step batches of weak and strong views. Each method's own step is `step.py` in its package
(selftrain.methods).
"""
