"""bnsweep benchmarks."""
