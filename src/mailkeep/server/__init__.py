"""asyncio drivers: sockets in, protocol decisions out, replies written."""
