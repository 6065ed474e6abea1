"""Pure PyTorch core of deepfake-guard: detectors, attacks, purifiers and image helpers.

Pixel contract (docs/CONTRIBUTING.md, convention 1): every image tensor is float32, N x 3 x H x W, values in [0, 1].
Nothing in this package imports FastAPI, RQ, Redis or reads the environment.
"""
