"""Speed and memory measurements: `python -m xlm_jax.benchmarks.<name> --help`."""
