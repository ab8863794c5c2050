"""Cohort cli package."""
