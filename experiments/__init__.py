"""Research runners: questions about the methods (which one, how many generations, how many unlabeled images),
answered by real runs at equal wall clock over seeds. Each is `python -m experiments.<name>`; its raw results go
under experiments/results/<name>/, its findings to docs/experiments/log.md and, in one line each, RESULTS.md.
Performance benchmarks (speed and memory as ratios) live in bench/ instead."""
