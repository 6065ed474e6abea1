"""What the API (``app``) and the workers (``workers``) share: settings, Redis key names and job types.

Neither side imports the other; both import this package (docs/CONTRIBUTING.md, "Layers").
"""
