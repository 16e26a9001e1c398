"""The `evo` command: every service's commands under one name (see main.py)."""
