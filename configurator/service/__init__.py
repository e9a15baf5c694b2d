"""The search service: ``configurator serve`` (FastAPI app in ``app.py``, store in ``store.py``, workers in
``jobs.py``, the plan page in ``page.py``). Needs the ``service`` extra (fastapi, uvicorn)."""
