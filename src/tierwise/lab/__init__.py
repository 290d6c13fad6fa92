"""Offline lab: outcome datasets, routing-quality metrics (and, later, replay, reports and plots)."""
