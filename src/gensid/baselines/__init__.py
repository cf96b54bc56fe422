"""Honest baselines ranked over the full catalog: most-popular and SASRec."""
