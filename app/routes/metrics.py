from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from app.metrics import ApiMetrics, get_api_metrics

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text format): HTTP, /detect, queue depth and backlog, jobs, workers",
    responses={200: {"content": {"text/plain": {}}, "description": "docs/OPERATIONS.md lists every metric"}},
)
def metrics(api_metrics: ApiMetrics = Depends(get_api_metrics)) -> Response:
    # A plain def: FastAPI runs it in a thread, so a slow Redis (up to DFG_REDIS_TIMEOUT_S) stalls only this scrape.
    body, media_type = api_metrics.exposition()
    return Response(body, media_type=media_type)
