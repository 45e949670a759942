"""MLflow models-from-code entry point: defines the pyfunc model object for ``log_upscaler_model``."""

import mlflow

from difiisr.registry.pyfunc import make_python_model

mlflow.models.set_model(make_python_model())
