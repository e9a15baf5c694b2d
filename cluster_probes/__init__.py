"""Cluster probes: measure links, collectives, memory and compute under torchrun, write a profile.

Run: ``torchrun ... -m cluster_probes --out PROFILE.json`` (see ``__main__.py``). Needs torch (the
``probe`` extra); the rest of the project does not import this package.
"""

__version__ = "0.1.0"
