"""MLflow models-from-code entry: one multi-head model that predicts every task from raw text.

Input: a DataFrame with a `text` column (and `text_pair` for sentence-pair tasks).
Output: a DataFrame with one column per task: a tag per whitespace word for token tasks,
a label for sentence classification, a number for regression.
The logged model's signature and input example say the same (training/release/signature.py).
"""
from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class MultiTaskPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from training.evaluation.predict import Predictor

        self.predictor = Predictor(context.artifacts["model_dir"])

    # no type hints here: MLflow would read them as a (list-based) input schema
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "text" not in frame.columns:
            raise ValueError(f"input needs a 'text' column; got columns {list(frame.columns)}")
        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame.columns else None
        return pd.DataFrame(self.predictor.predict(frame["text"].astype(str).tolist(), pairs))


mlflow.models.set_model(MultiTaskPyfunc())
