"""Deletion requests: the schema, intake checks against the world, and batching.

The requests themselves, with their states, live in the state database (``unlearn_lib.state``).
"""

from .schema import BASES, DeletionBatch, DeletionRequest, load_request, parse_request

__all__ = ["BASES", "DeletionBatch", "DeletionRequest", "load_request", "parse_request"]
