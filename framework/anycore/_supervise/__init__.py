"""Supervision: the supervisor and its control socket, stack files and systemd notification."""
