"""``visiontune serve``: a local web page and a JSON API for a trained model.

``create_app(model)`` builds the ASGI app (FastAPI) for a model from ``visiontune.load``;
``ServeConfig`` holds its options; ``run_server`` serves it with uvicorn.

>>> run = visiontune.fit(photos, strategy="head", out="run", progress=False, **TINY).run_dir
>>> app = create_app(visiontune.load(run), ServeConfig(max_batch=8))
>>> sorted(r.path for r in app.routes if r.path in ("/predict", "/model", "/health"))
['/health', '/model', '/predict']
"""

from .app import create_app
from .config import ServeConfig
from .server import run_server

__all__ = ["ServeConfig", "create_app", "run_server"]
