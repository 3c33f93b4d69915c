"""The sync engine: lanes, failover between endpoints, upstreams.
"""
