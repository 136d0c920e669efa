"""``python -m sparsezip.integrations.lmms_eval``: print the folder to pass as lmms-eval's ``--include_path``."""

from sparsezip.integrations.lmms_eval import TASKS_DIR

print(TASKS_DIR)
