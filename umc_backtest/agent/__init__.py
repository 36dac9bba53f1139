"""The UMC active-inference trading agent (registers the ``umc`` strategy on import)."""

from .umc import ABLATIONS, UMCAgent

__all__ = ["ABLATIONS", "UMCAgent"]
