"""The ai service's offline analyzer: no network, no model download, deterministic."""

from ai_service.offline.analyzer import OFFLINE_MODEL, OfflineAnalyzer

__all__ = ["OFFLINE_MODEL", "OfflineAnalyzer"]
