"""What MLflow runs to load a logged model ("models from code"): the registry holds no pickle.

``log_model_folder`` copies this file into each MLflow Model; loading executes it, and it needs
the installed ``unlearn_lib`` (see ``unlearn_lib.tracking.pyfunc``).
"""

from mlflow.models import set_model

from unlearn_lib.tracking.pyfunc import DiffusionPyfunc

set_model(DiffusionPyfunc())
