"""Stand-in model servers that speak real protocols over real sockets, for backend tests."""
