"""Fault injection on live servers: killed workers, lost or stopped Redis, full disks, slow and vanishing
clients, races.
"""
