"""The browser UI behind ``depth2img serve``: a gradio 6 app over one loaded pipeline.

UI only: every image, depth map, PNG record and error sentence comes from the same helpers the command line
uses (``depth2img.cli``), so a picture made in the browser carries the parameters ``generate --from-png``
replays. Modules: ``options`` (the server's settings), ``uploads`` (checking what a browser sends),
``engine`` (the model and one run), ``sessions`` (per-browser state), ``handlers`` (gradio callbacks),
``components`` (an upload that reaches the handler unread), ``layout`` (the page) and ``server`` (load,
build, launch). Nothing here imports gradio at package import.
"""
