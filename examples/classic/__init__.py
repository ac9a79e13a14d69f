"""The reference chapters' worked examples, rewritten on anycore (see docs/classic.md)."""
