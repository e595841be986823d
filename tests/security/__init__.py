"""Who may do what, and what a hostile client cannot do: ownership, quotas, size limits, names, header injection,
ids.
"""
