"""The model of the batch tests (MLflow's models from code): ``2 * a + b``.

It fails on a row whose ``b`` is below -1000 (a bad row the signature cannot see), and, while
``JMK_TEST_BATCH_HANG`` is set, never returns for a batch holding ``a == 777`` (a shard to kill half way).
"""

import os
import time

import mlflow
from mlflow.pyfunc import PythonModel


class TwiceAPlusB(PythonModel):
    def predict(self, context, model_input, params=None):
        if (model_input["b"] < -1000).any():
            raise ValueError("b below -1000")
        while os.environ.get("JMK_TEST_BATCH_HANG") and (model_input["a"] == 777).any():
            time.sleep(0.05)
        return model_input["a"] * 2 + model_input["b"]


mlflow.models.set_model(TwiceAPlusB())
