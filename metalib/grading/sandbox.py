"""The sandboxed process: runs one submitted notebook and answers the grader's requests (Linux).

The grader starts ``python -m metalib.grading.sandbox FD [VIEW]`` in a scratch folder, with a
request on stdin and a pipe on file descriptor ``FD``. This process:

1. reads the request's bytes; where the grader made a view of the course's Python environment
   (``VIEW``, a JSON object ``{folder: its view}``, see :mod:`metalib.grading.view`), points its
   import paths at the view *before* importing anything large, so that every module, and every
   data file a module finds next to itself, is read through the view;
2. imports what a notebook needs (trusted code: :mod:`metalib.grading.runner`), decodes the
   request (plain data saved with ``torch.save``: the notebook's code cells, the cases to run as
   ``(question, function, probe, kwargs)``, the limits, and the uid to become);
3. locks itself in (:mod:`.lockdown`): resource limits; where the kernel allows, a read-only file
   system with a small private ``/tmp``, no network and its own PID namespace; as root, an unused
   uid with no way back;
4. runs the cells and the cases (:func:`metalib.grading.runner.run_notebook`) and sends each
   outcome to the grader as a frame on ``FD``.

Judges and expected values never enter this process: whatever a notebook patches, it patches here
only. Only the standard library and :mod:`.lockdown` are imported before step 1.
"""

from __future__ import annotations

import io
import json
import os
import sys

from metalib.grading import lockdown


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``python -m metalib.grading.sandbox FD [VIEW]`` with the request on stdin."""
    argv = sys.argv[1:] if argv is None else argv
    data = sys.stdin.buffer.read()
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # the request (hidden cases included) is not left readable on stdin
    os.close(null)
    if len(argv) > 1:
        lockdown.use_view(json.loads(argv[1]))
    import torch

    from metalib.grading import runner

    channel = runner.Channel(int(argv[0]))
    request = torch.load(io.BytesIO(data), weights_only=True)
    del data
    torch.set_num_threads(1)
    notes = lockdown.lock_in(request)
    if len(argv) > 1:
        shown = ", ".join(f"{k} as {v}" for k, v in json.loads(argv[1]).items())
        notes.append(f"the course's Python read through a view of hard links: {shown}")
    request.pop("hide", None)  # the folders' names are no business of the notebook
    channel.send(kind="ready", notes=notes)
    runner.run_notebook(request, channel)
    os._exit(0)  # skip atexit hooks and thread joins the notebook may have left behind


if __name__ == "__main__":
    main()
