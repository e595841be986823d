"""Record store, Lua scripts, completion service, system checks, lock holders, Redis connections and the harness
itself.
"""
