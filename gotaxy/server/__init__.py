"""The Gotaxy server: control connections, tunnels, ports (see core.py)."""
