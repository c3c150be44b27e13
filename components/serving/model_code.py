"""The logged model's code (MLflow "models from code"): MLflow runs this file to build the model
when it loads it, so nothing is unpickled. The weights and spec come in as artifacts."""

import mlflow

from trainwise.components.serving.pyfunc import TrainwiseClassifier

mlflow.models.set_model(TrainwiseClassifier())
