"""Cohort coordinator package."""
