"""Batch restoration over many ComfyUI servers on Ray: ``python -m workflows.batch WORKFLOW --input DIR --output
DIR --servers URL,URL`` (see docs/batch.md). Ray is imported only when the command runs."""
