"""Message passing between processes: connections, listeners and clients, managers and
proxies, shared memory and process-shared synchronisation."""
