"""The action scheduler (``archipel:entity:scheduler``): when jobs fire (``spec``), the
persisted jobs and the one timer loop that runs them (``service``)."""
from .spec import FIELDS, Spec, parse_spec, spec_at
from .service import Job, Scheduler

__all__ = ["FIELDS", "Job", "Scheduler", "Spec", "parse_spec", "spec_at"]
