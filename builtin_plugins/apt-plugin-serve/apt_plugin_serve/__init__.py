"""Serve a trained APT model behind an OpenAI-compatible API: ``apt-kernel serve PATH``.

- ``engine``: continuous batching (requests join and leave the running batch between decode steps);
  ``process``/``worker``: the engine in a process of its own, and the server's side of it;
- ``models``: what a run or model folder holds, loaded for serving, and ``--watch``'s reloading;
- ``app``/``routes``: the FastAPI application, thin routes over the engine;
- ``schemas``: the OpenAI request and response bodies; ``chat``: messages to a prompt; ``media``: images
  and audio in requests; ``metrics``: Prometheus.
"""

__version__ = "0.1.0"
