"""Performance benchmarks: speed and memory as ratios against a baseline measured in the same run, each
`python -m bench.<name>`; raw results under bench/results/, findings in docs/experiments/log.md. Research runners
(which method, how many generations) live in experiments/ instead."""
