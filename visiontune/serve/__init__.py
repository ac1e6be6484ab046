"""``visiontune serve``: a local web page and a JSON API for a trained model.

``create_app(model)`` builds the ASGI app (FastAPI) for a model from ``visiontune.load``;
``ServeConfig`` holds its options; ``run_server`` serves it with uvicorn. Imported lazily, so
the command line's parser reads ``ServeConfig``'s defaults without importing torch or FastAPI.

>>> from visiontune.serve import create_app
>>> run = visiontune.fit(photos, strategy="head", out="run", progress=False, **TINY).run_dir
>>> app = create_app(visiontune.load(run), ServeConfig(max_batch=8))
>>> sorted(r.path for r in app.routes if r.path in ("/predict", "/model", "/health"))
['/health', '/model', '/predict']
"""

from .config import ServeConfig

__all__ = ["ServeConfig", "create_app", "run_server"]


def __getattr__(name):
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(f"module 'visiontune.serve' has no attribute {name!r}")
