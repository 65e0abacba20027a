"""Helpers shared by several cogs. Not a cog: no extension loads it, and no cog imports another."""
