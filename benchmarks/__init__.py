"""anycore's benchmarks: each bench_*.py module has ``main(quick: bool)``."""
