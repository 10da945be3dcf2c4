"""paramex-launch: starts paramex-server shards and worker processes (see cli.py)."""
