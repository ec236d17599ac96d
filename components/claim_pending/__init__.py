from .component import claim_pending

__all__ = ["claim_pending"]
