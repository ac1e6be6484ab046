"""``create_app``: the web page, the model card and the JSON API of one model, as a FastAPI app.

FastAPI (on Starlette, served by uvicorn) rather than bare Starlette: the API's query options
are declared once, as typed parameters, and the same declaration validates requests (a bad
value is a 422 naming it) and writes the OpenAPI document behind ``/docs``. Swagger UI's files
come from the ``swagger-ui-bundle`` package, not a CDN, so ``/docs`` works offline like the rest.
"""

import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Literal

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .._version import __version__
from ..choices import TTA_MODES
from ..prediction.base import Predictor
from ..prediction.ensemble import Ensemble
from .batcher import QueueFull
from .card import find_reports, model_card
from .config import ServeConfig
from .limits import BodyLimit, BodyTooLarge, too_large_response
from .service import RequestError, Service, Upload

__all__ = ["STATIC", "create_app"]

STATIC = Path(__file__).parent / "static"
_TTA = Literal[TTA_MODES]  # type: ignore[valid-type]

_MULTIPART = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "files": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["files"],
                }
            }
        },
    }
}


def _error(status: int, message: str, **headers) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {error.get('msg')}")
    return "; ".join(parts)


def _add_error_handlers(app: FastAPI, config: ServeConfig) -> None:
    @app.exception_handler(RequestError)
    async def refused(_request, exc: RequestError):
        return _error(exc.status, exc.message)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(_request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(QueueFull)
    async def busy(_request, exc: QueueFull):
        return _error(503, str(exc), **{"Retry-After": "1"})

    @app.exception_handler(BodyTooLarge)
    async def too_large(_request, _exc):
        return too_large_response(config.max_upload_bytes)


async def _uploads(request: Request, config: ServeConfig) -> list[Upload]:
    content_type = request.headers.get("content-type", "")
    if request.headers.get("content-length") == "0" or not content_type:
        raise RequestError(400, "the request has no body: send the images as multipart/form-data")
    if not content_type.startswith("multipart/form-data"):
        raise RequestError(
            415,
            f"send the images as multipart/form-data (curl -F files=@photo.jpg), "
            f"not {content_type.split(';')[0]}",
        )
    form = await request.form(max_files=config.max_files, max_fields=config.max_files)
    files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    return [Upload(f.filename or f"file-{i}", await f.read()) for i, f in enumerate(files, 1)]


def _add_api(app: FastAPI, service: Service, config: ServeConfig, card: dict) -> None:
    @app.get("/health", summary="Liveness, queue and batching counters")
    async def health():
        return {
            "status": "ok",
            "in_flight": service.in_flight,
            "waiting_images": service.batcher.waiting,
            "idle": service.batcher.released,
            **service.batcher.stats.to_dict(),
        }

    @app.get("/model", summary="The model card: classes, preprocessing, metrics, versions")
    async def model():
        return card

    @app.post("/predict", summary="Classify uploaded images", openapi_extra=_MULTIPART)
    async def predict(
        request: Request,
        top_k: Annotated[
            int, Query(ge=1, le=config.max_top_k, description="classes per image")
        ] = 1,
        tta: Annotated[_TTA, Query(description="test-time augmentation (run folders)")] = "none",
        reject: Annotated[
            str | None, Query(description="auto, none or a threshold on unknown_score")
        ] = None,
        reject_rate: Annotated[
            float | None, Query(gt=0, lt=1, description="the share auto flags")
        ] = None,
        explain: Annotated[
            bool, Query(description="add Grad-CAM overlays (PNG data URLs)")
        ] = False,
    ):
        start = time.perf_counter()
        service.in_flight += 1
        try:
            service.check_options(tta=tta, reject=reject, explain=explain)
            uploads = await _uploads(request, config)
            rows = await service.predict(
                uploads,
                top_k=top_k,
                tta=tta,
                reject=reject,
                reject_rate=reject_rate,
                explain=explain,
            )
        finally:
            service.in_flight -= 1
        elapsed = round((time.perf_counter() - start) * 1000, 2)
        return {"predictions": rows, "tta": tta, "elapsed_ms": elapsed}


def _add_pages(app: FastAPI, reports: list[Path]) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/card", include_in_schema=False)
    async def card_page():
        return FileResponse(STATIC / "card.html")

    @app.get("/docs", include_in_schema=False)
    async def docs():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="visiontune API",
            swagger_js_url="/swagger/swagger-ui-bundle.js",
            swagger_css_url="/swagger/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    import swagger_ui_bundle

    app.mount("/swagger", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="swagger")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    for i, folder in enumerate(reports):
        app.mount(f"/reports/{i}", StaticFiles(directory=folder, html=True), name=f"report{i}")


def _run_dirs(model: Predictor) -> list[Path | None]:
    members = model.members if isinstance(model, Ensemble) else [model]
    return [getattr(m, "run_dir", None) for m in members]


def create_app(model: Predictor, config: ServeConfig | None = None) -> FastAPI:
    """The ASGI app serving ``model`` (``visiontune.load(...)``: a run, an ensemble or an
    ``.onnx`` file). Mount it in your own app or run it with uvicorn::

        app = create_app(visiontune.load("runs/poses"))
        uvicorn.run(app, host="127.0.0.1", port=8000)

    The model is used from one thread of its own; requests are batched (``ServeConfig``).
    """
    config = config or ServeConfig()
    service = Service(model, config)
    reports = [r for run in _run_dirs(model) for r in find_reports(run)]
    card = model_card(model, report_urls=[f"/reports/{i}/" for i in range(len(reports))])
    card["serving"] = {
        "max_batch": config.max_batch,
        "max_wait_ms": config.max_wait_ms,
        "max_upload_mb": config.max_upload_mb,
        "max_files": config.max_files,
        "tta": list(TTA_MODES) if card["kind"] != "onnx" else ["none"],
        "explain": service.explainable,
        "rejection": service.scores_unknown,
    }

    @asynccontextmanager
    async def lifespan(_app):
        yield
        await service.close()

    app = FastAPI(
        title="visiontune",
        version=__version__,
        description="Image classification with a model trained by visiontune.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.service = service
    _add_error_handlers(app, config)
    _add_api(app, service, config, card)
    _add_pages(app, reports)
    app.add_middleware(BodyLimit, max_bytes=config.max_upload_bytes, paths=("/predict",))
    return app
