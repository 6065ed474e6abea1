"""HTTP layer of deepfake-guard: FastAPI app, routes, schemas, settings and error mapping."""
