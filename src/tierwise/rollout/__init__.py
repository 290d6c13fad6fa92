"""Rollout without surprises (issue 11): capture, reports and counterfactuals from the ledger, re-pricing, what-if
replay, feedback, advice on whether routing pays — and (other modules) sampling, trials, shadow and canary.

Kept import-light: the CLI imports the submodule a verb needs, when it runs.
"""
