"""Verifier training: labels from the policy's own samples, features, probes."""
