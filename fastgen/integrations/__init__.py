"""Adapters that plug fastgen kernels into other libraries.

    fastgen.integrations.transformers   ``register()``: ``attn_implementation="fastgen"`` for
                                        Hugging Face transformers models

Each adapter imports its library only when it is used, so ``import fastgen`` (and importing this
package) never imports transformers, diffusers or any other optional dependency.
"""

__all__: list[str] = []
