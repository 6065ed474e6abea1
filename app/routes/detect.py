from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, UploadFile
from pydantic import Field
from starlette.concurrency import run_in_threadpool
from torch import Tensor

from app.deps import get_app_settings, get_detection, get_pixel_gate
from app.detection import DetectionService
from app.errors import InvalidParameter, problem_responses
from app.forms import STRICT_FLOAT
from app.metrics import ApiMetrics, get_api_metrics
from app.pixels import PixelGate, declared_pixels
from app.schemas import DetectionResult, DetectResponse, FaceResult, ModelInfo, ModelRef, ModelsResponse
from app.uploads import form_fields, read_images
from core.settings import Settings
from models.checkpoint import LoadedCheckpoint, public
from models.facecrop import CROP_MODES, find_faces, label_of, most_fake

router = APIRouter(tags=["detection"])

#: The form fields of POST /detect (anything else is refused: app.uploads.form_fields); ``file`` may repeat.
DETECT_FIELDS = frozenset({"file", "model", "threshold", "crop"})
#: The optional ``threshold`` form field of /detect, /attack and /purify: every verdict uses the request's value,
#: else the checkpoint's fitted one, else 0.5 (``models.detector.operating_threshold``).
ThresholdField = Annotated[
    Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None,
    STRICT_FLOAT,
    Form(
        description="The verdict is fake when p_fake >= threshold (default: the detector's fitted operating threshold "
        "from its checkpoint, else 0.5); the answer says which it used (`threshold`, `threshold_source`)."
    ),
]
CROP_HELP = (
    "`none`: score the whole image (resized inside the detector). `faces`: score each face found (docs/FACES.md) on "
    "its crop; the image's p_fake and label are its most fake face's, `no_face` (p_fake null) without a face."
)


@router.post(
    "/detect",
    response_model=DetectResponse,
    summary="Score images as fake or real",
    responses=problem_responses(404, 413, 415, 422, 503),
    dependencies=[Depends(form_fields(DETECT_FIELDS, repeatable=frozenset({"file"})))],
)
async def detect(
    file: Annotated[list[UploadFile], File(min_length=1, description="One or more images (repeat the field).")],
    model: Annotated[str | None, Form(description="Detector name (GET /models); default from settings.")] = None,
    threshold: ThresholdField = None,
    crop: Annotated[Literal[CROP_MODES], Form(description=CROP_HELP)] = "none",  # type: ignore[valid-type]
    settings: Settings = Depends(get_app_settings),
    service: DetectionService = Depends(get_detection),
    gate: PixelGate = Depends(get_pixel_gate),
    api_metrics: ApiMetrics = Depends(get_api_metrics),
) -> DetectResponse:
    if len(file) > settings.max_files:
        raise InvalidParameter(f"{len(file)} files sent; at most {settings.max_files} per request")
    loaded = service.model(model)
    threshold, source = loaded.meta.operating_point(threshold)
    async with gate.hold(await declared_pixels(file)):  # until the full-size images are scored and dropped
        images = await read_images(file, settings)
        if crop == "faces":
            results = await _score_faces(service, loaded, file, images, threshold)
        else:
            scores = await service.score(loaded, images)
            results = [
                DetectionResult(
                    filename=f.filename,
                    width=s.width,
                    height=s.height,
                    p_fake=s.p_fake,
                    label=label_of(s.p_fake, threshold),
                    model=ModelRef(name=loaded.name, sha256=loaded.sha256),
                )
                for f, s in zip(file, scores, strict=True)
            ]
        del images
    api_metrics.detect_images.labels(loaded.name).inc(len(results))
    api_metrics.detect_request_images.observe(len(results))
    ref = ModelRef(name=loaded.name, sha256=loaded.sha256)
    return DetectResponse(model=ref, threshold=threshold, threshold_source=source, results=results)


async def _score_faces(
    service: DetectionService, loaded: LoadedCheckpoint, files: list[UploadFile], images: list[Tensor], threshold: float
) -> list[DetectionResult]:
    # dlib runs on the CPU for ~0.36 s a 1024 px photo (docs/FACES.md): in the threadpool, once per upload.
    boxes = await run_in_threadpool(lambda: [find_faces(x) for x in images])
    verdicts = await service.score_faces(loaded, images, boxes)
    ref = ModelRef(name=loaded.name, sha256=loaded.sha256)
    return [
        DetectionResult(
            filename=f.filename,
            width=int(x.shape[2]),
            height=int(x.shape[1]),
            p_fake=most_fake(v),
            label=label_of(most_fake(v), threshold),
            model=ref,
            faces=[FaceResult(**face.to_json(threshold)) for face in v],
        )
        for f, x, v in zip(files, images, verdicts, strict=True)
    ]


@router.get(
    "/models",
    response_model=ModelsResponse,
    summary="Detectors this service can use",
    responses=problem_responses(503),
)
def list_models(service: DetectionService = Depends(get_detection)) -> ModelsResponse:
    return ModelsResponse(default=service.default_model, models=[_model_info(c, service) for c in service.zoo])


def _model_info(c: LoadedCheckpoint, service: DetectionService) -> ModelInfo:
    threshold, source = c.meta.operating_point()
    calibration = c.meta.metrics.get("calibration") if source == "checkpoint" else None
    return ModelInfo(
        name=c.name,
        architecture=c.meta.architecture,
        input_size=c.meta.input_size,
        class_names=c.meta.class_names,
        fake_index=c.meta.fake_index,
        logits=c.meta.logits,
        resize=c.meta.resize,  # type: ignore[arg-type]
        resize_short=c.meta.resize_short,
        interpolation=c.meta.interpolation,  # type: ignore[arg-type]
        antialias=c.meta.antialias,
        mean=c.meta.mean,
        std=c.meta.std,
        sha256=c.sha256,
        default=c.name == service.default_model,
        threshold=threshold,
        threshold_source=source,  # type: ignore[arg-type]
        calibration=public(calibration) if isinstance(calibration, dict) else None,
        demo_data=c.meta.demo_data,
        metrics=public(c.meta.metrics),
        provenance=public(c.meta.provenance),
    )
