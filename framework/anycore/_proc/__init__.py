"""Processes and the OS around them: spawning, pipes, subprocesses, pipelines, ptys, the
console and filesystem walks."""
