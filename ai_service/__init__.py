"""The ai service: text analysis through Claude or offline (`ai.v1.AnalysisService`)."""
