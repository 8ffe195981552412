"""Principle-driven on-policy data for SSO: principles, feature allocation, judge prompts."""
