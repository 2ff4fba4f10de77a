"""Metrics, target types, test-time views and blends: what turns outputs into decisions and scores."""
