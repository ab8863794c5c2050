"""Cohort client package."""
