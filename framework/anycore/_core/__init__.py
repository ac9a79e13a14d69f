"""The foundation: runtime, tasks, timers, signals, backends, cross-cutting state, queues and
thread-safe primitives.  Imports nothing of anycore outside itself but ``anycore.errors``."""
