"""Backends: the seam between the requestor and a Golem network, and its implementations."""
