"""Networking: endpoints, the sans-IO framers, handlers and their drivers, servers, clients,
text and asynchat layers, datagrams."""
