from .component import audit

__all__ = ["audit"]
