"""The benchmarks: each stage's figures measured side by side in one run, through the stages' public functions.

    raylora bench all configs/demo.yaml      # or: make bench
"""
