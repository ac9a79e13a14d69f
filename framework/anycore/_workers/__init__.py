"""Work in other processes and threads: the child-process toolkit, pools and their backends,
process queues and actors."""
