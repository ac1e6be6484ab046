"""The training workflow, as phases that take and return values.

``make_plan`` (plan.py) decides everything and writes nothing; ``prepare_data`` (prepare.py)
screens the splits; ``train`` (run.py) runs the frozen-feature path (frozen.py) or the
end-to-end one (finetune.py, checkpointed by checkpoints.py); ``write_run`` saves the folder.
``run_training`` chains them; auto.py (``--strategy auto``: candidates scored on validation),
ensemble.py and resume.py build on it.
"""

from .auto import train_auto
from .ensemble import EnsembleFitResult, member_configs, train_ensemble
from .plan import Plan, make_plan
from .prepare import PreparedData, prepare_data
from .resume import resumed_config
from .run import FitResult, Outcome, run_training, train, write_run

__all__ = [
    "EnsembleFitResult",
    "FitResult",
    "Outcome",
    "Plan",
    "PreparedData",
    "make_plan",
    "member_configs",
    "prepare_data",
    "resumed_config",
    "run_training",
    "train",
    "train_auto",
    "train_ensemble",
    "write_run",
]
