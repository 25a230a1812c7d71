"""MLflow models-from-code entry: one multi-head model that predicts every task from raw text.

Input: a DataFrame (or records, or a dict of columns) with a `text` column (a sentence) or a
`tokens` column (a list of words), `text_pair` for sentence-pair tasks, optionally `id`; the
rules are `training/release/serving.py`'s, shared with `mtl predict`.
Output: a DataFrame with one column per task, every task from one call: a tag per word for token
tasks, a `{"head": int, "deprel": str}` per word for dependency parsing, a label for sentence
classification, a number for regression. Pair tasks are left out when
no row has a `text_pair`, and are None for a row without one.
Bad input raises an MlflowException (INVALID_PARAMETER_VALUE) naming each row and field, so that
`mlflow models serve` answers 400 with that text and no stack trace.
The logged model's signature and input example say the same (training/release/signature.py).
Device and precision: the inference policy's (training/evaluation/device.py): MTL_DEVICE and
MTL_PRECISION in the server's environment, else CUDA with bf16 where the GPU has it, else the CPU.
"""
from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class MultiTaskPyfunc(PythonModel):
    def load_context(self, context: Any) -> None:
        from training.evaluation.predict import Predictor

        # no flags reach a model behind `mlflow models serve`: the policy reads MTL_DEVICE / MTL_PRECISION
        self.predictor = Predictor(context.artifacts["model_dir"])

    # no type hints here: MLflow would read them as a (list-based) input schema
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        from mlflow.exceptions import MlflowException

        from data_prep.errors import DataValidationError
        from training.release.serving import inputs_from_frame, predict_inputs

        try:
            inputs = inputs_from_frame(model_input)
        except DataValidationError as exc:
            # MLflow's scoring server answers an MlflowException raised here with its code's status
            # (400) and its message, without a stack trace; any other exception becomes a generic
            # 400 whose useful text sits at the end of a traceback with the server's paths
            raise MlflowException.invalid_parameter_value(str(exc)) from None
        results = predict_inputs(self.predictor, inputs)
        # the model's task order, also where the first rows have no pair
        # object columns: pandas would make a label column with holes a string column of NaN
        columns = [t for t in self.predictor.tasks if not results or t in results[0]]
        return pd.DataFrame(results, columns=columns, dtype=object)


mlflow.models.set_model(MultiTaskPyfunc())
