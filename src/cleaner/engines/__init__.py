"""Generation engines behind the token-in/token-out :class:`cleaner.engines.base.Generator` protocol."""

from cleaner.engines.base import GenerationOutput, Generator, SamplingParams

__all__ = ["GenerationOutput", "Generator", "SamplingParams"]
