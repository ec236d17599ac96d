"""Deletion requests: the schema, a file-backed queue, and batching of pending requests."""

from .queue import RequestQueue
from .schema import BASES, DeletionBatch, DeletionRequest, load_request, parse_request

__all__ = ["BASES", "DeletionBatch", "DeletionRequest", "RequestQueue", "load_request", "parse_request"]
