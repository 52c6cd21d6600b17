"""Restoration sampling: SUPIR's schedules, samplers, guidance and presets, and its prompts."""
