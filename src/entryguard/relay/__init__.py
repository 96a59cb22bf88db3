"""asyncio glue between the sans-I/O mux, one WebSocket, and TCP sockets (edge and agent)."""
