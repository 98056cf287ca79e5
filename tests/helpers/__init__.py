"""Builders of tiny local models for tests (weights are made in tmp_path, never committed)."""
