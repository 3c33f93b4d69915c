"""What a job did or would do: estimates, per-endpoint tallies.
"""
