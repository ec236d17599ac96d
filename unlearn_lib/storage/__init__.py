"""Artifact storage behind one interface: a local folder or an S3-compatible bucket (boto3)."""

from .store import ArtifactStore, LocalStore, S3Store, StorageError, store_from_settings

__all__ = ["ArtifactStore", "LocalStore", "S3Store", "StorageError", "store_from_settings"]
