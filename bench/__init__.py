"""Fan-out benchmark: the liveclass edge against the servers users pick instead.

Run ``python -m bench.fanout --help``. Nothing here is installed with the
package; it is a development tool that lives beside the sources.
"""
