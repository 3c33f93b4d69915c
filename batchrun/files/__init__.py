"""What batchrun keeps on disk: input, output, locks, manifests, the ledger.
"""
