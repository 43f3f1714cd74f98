"""Calibration of the offline analyzer's `confidence`; generated, do not edit.

Written by bench/offline_calibrate.py from the fitting half of the VADER ground-truth
corpora (vaderSentiment==3.3.2 sdist, sha256 5d7c06e027fc8b99…, split seed
20140601) for offline-v1: 11851 rated items (279 read as MIXED, left out)
and 3000 synthetic documents of 2-3 snippets (seed 7).
Each table holds (strength, probability that the label is right) knots; see
ai_service/offline/confidence.py for how they are read.
"""

POSITIVE = (
    (0.1351, 0.4053),
    (0.2601, 0.4553),
    (0.3469, 0.4582),
    (0.4103, 0.5386),
    (0.454, 0.6456),
    (0.5154, 0.664),
    (0.5834, 0.7114),
    (0.6647, 0.7752),
    (0.7932, 0.8098),
    (0.9075, 0.9084),
)
NEGATIVE = (
    (0.1525, 0.6047),
    (0.2929, 0.6393),
    (0.3499, 0.6667),
    (0.4342, 0.6982),
    (0.6185, 0.763),
    (0.7992, 0.81),
    (0.8981, 0.8286),
)
NEUTRAL = ((0.0025, 0.3888),)
MIXED = (
    (0.1945, 0.5403),
    (0.4014, 0.5871),
    (0.5392, 0.7419),
    (0.6978, 0.7742),
)
