"""Scripts that measure and print one table each: run them from the repository root as
`python -m benchmarks.<name>` (README). Helpers: `shipped_model`, `flop_count`."""
