"""Turning (image, prompt) batches into raw text, parses and region scores.

Only the pure-Python parts are imported here, so the light backend can use the types and profiles
without torch. Import engines from their modules: ``engine.transformers_engine`` (torch) and
``engine.tiny`` (torch) are for the worker, tests and benchmarks.
"""

from varco_labeler.engine.base import Engine, Request, Result
from varco_labeler.engine.profiles import DEFAULT_MODEL, MergeLevel, Profile, profile_for

__all__ = ["DEFAULT_MODEL", "Engine", "MergeLevel", "Profile", "Request", "Result", "profile_for"]
