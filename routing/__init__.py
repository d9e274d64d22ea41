"""Routing: GeoIP lookup, edge ranking and latency probing.

Imports nothing else of liveclass. The GeoIP database reader
(:mod:`liveclass.routing.geoip`) needs the server extra and is imported only
on the origin's side; the rest is light enough for the SDK.
"""
