"""HTTP routes; each module is a thin APIRouter."""
