"""The origin's HTTP API, one module per resource."""
