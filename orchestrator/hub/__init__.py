"""Hugging Face hub assets a spec names: the typed records, the cache checks, prefetching, offline jobs."""
