"""Thin model wrappers built from fastgen modules (demos and end-to-end checks)."""

from .denoiser import (SCHEDULERS, Denoiser, SamplingTiming, TrainResult, make_scheduler, sample,
                       train_denoiser)
from .gpt import GPT, GPTConfig, GPTTrainResult, train_gpt
from .image import FitResult, NeuralImage, fit_image, pixel_samples, psnr, train_step
from .ngp import InstantNGP, NGPTrainResult, train_ngp

__all__ = ["NeuralImage", "FitResult", "fit_image", "pixel_samples", "train_step", "psnr",
           "Denoiser", "TrainResult",
           "SamplingTiming", "train_denoiser", "sample", "make_scheduler", "SCHEDULERS",
           "GPT", "GPTConfig", "GPTTrainResult", "train_gpt",
           "InstantNGP", "NGPTrainResult", "train_ngp"]
