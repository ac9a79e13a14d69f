"""anycore's runnable examples (importable as ``examples.X`` from the repository root,
so ``anycore run examples.echo:EchoHandler --bind ...`` works there)."""
