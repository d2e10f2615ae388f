"""Thin model wrappers built from fastgen modules (demos and end-to-end checks)."""

from .image import FitResult, NeuralImage, fit_image, psnr

__all__ = ["NeuralImage", "FitResult", "fit_image", "psnr"]
