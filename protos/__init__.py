"""Cohort protos package."""
