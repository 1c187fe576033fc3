"""Studies: the field's LoRA findings as runnable experiments with an honest verdict.

    raylora study --list
    raylora study NAME configs/demo.yaml [key.path=value ...] [--reduced]

Each study is a YAML in ``configs/studies/`` (``schema.py``), run as Ray Tune grid searches through the tune
stage's public function (``runner.py``), judged claim by claim from per-seed differences (``verdict.py``).
"""

from pipelines.study.runner import run_study
from pipelines.study.schema import Study, describe_studies, load_study, study_names

__all__ = ["Study", "describe_studies", "load_study", "run_study", "study_names"]
