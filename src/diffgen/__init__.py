"""diffgen: train, sample and upscale images with diffusion models.

From Python: `from diffgen import generate, upscale, load_model` (see `diffgen.api`). They are loaded on
first use, so `import diffgen` (and `diffgen --help`) does not import torch.
"""

import sys
import types

__version__ = "0.1.0"

API = ("generate", "upscale", "load_model")  # in diffgen.api
__all__ = [*API, "__version__"]


def __getattr__(name: str):
    if name in API:
        from diffgen import api

        return getattr(api, name)
    raise AttributeError(f"module 'diffgen' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})


class Package(types.ModuleType):
    """diffgen itself, where `diffgen.generate` and `diffgen.upscale` are the API's functions although modules
    of those names exist. Python sets a package's attribute to a submodule when it first imports one, which
    would make `from diffgen import generate` give the function or the module depending on what was imported
    before: that attribute is not set, and the modules are reached by their full names
    (`from diffgen.generate import iter_images`, `importlib.import_module("diffgen.generate")`)."""

    def __setattr__(self, name: str, value) -> None:
        if name in API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = Package
