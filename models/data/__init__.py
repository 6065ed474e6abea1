"""Datasets for training and evaluating detectors.

``folder`` reads an ImageFolder (``ROOT/{fake,real}/*``) into [0, 1] tensors; ``demo`` synthesises the
offline demo dataset (real photo crops vs crops whose centre a small generator network re-synthesised).
"""
