"""Triton kernels of fastgen, installed as ``fastgen.kernels``: one module per op family.

Importing a module here imports triton; fastgen imports them lazily, from inside the op that
launches them, so ``import fastgen`` works (and stays fast) where triton is absent.
"""
