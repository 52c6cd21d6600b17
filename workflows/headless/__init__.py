"""Runs this pack's API-format workflows (``workflows/api/*.json``, or any API workflow) on a ComfyUI server and
downloads the results; the code of the ``python -m workflows.client`` command, shared by other commands that drive
a server. Needs only the standard library, aiohttp and Pillow (which ComfyUI already requires); never ComfyUI or
torch.

One module per concern:

- ``workflow``: load a workflow (``resolve_workflow_path``, ``load_workflow``), apply overrides
  (``Overrides``, ``parse_set``, ``apply_overrides``), find the LoadImage that takes the input (``image_node``),
  list input images (``list_inputs``, each checked with Pillow); no server needed.
- ``server``: a server's address (``server_url``), a connection to it (``open_client`` -> ``Client``: requests
  retried while it is unreachable, ``ServerError`` once it cannot be used), ``upload_image``.
- ``submission``: one ``Job`` run exactly once: ``wait_for_result`` submits it with a prompt id chosen here and
  follows it to its history entry through lost connections and restarts; ``failure_message`` and
  ``validation_message`` read the server's answers.
- ``outputs``: ``check_output_folder``, the files of a history entry, their names (``output_names``: safe and
  unique whatever the server answers), and ``download_outputs`` into a folder (each file written whole or not at
  all, and only there).
- ``models``: the models folder of a loader input, for a workflow refused because the server lacks a file.
- ``run``: ``make_jobs`` (one per input image), ``run_job`` (upload, submit, follow, download), ``run_batch``.
- ``errors``: ``WorkflowError``, ``JobFailed``, ``ServerError`` and the exit statuses they map to.
- ``cli``: the command line of ``python -m workflows.client``.
"""
