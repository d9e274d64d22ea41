"""Minimal broadcast servers the edge is measured against, one per file.

Each accepts WebSocket clients and sends every text message a client sends
to every connected client, in the way its library's documentation shows.
"""
