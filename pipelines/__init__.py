"""The Kubeflow pipelines of difiisr: ``train_eval`` (the lifecycle DAG) and ``batch_upscale`` (scheduled
inference). Each file is runnable: a local run by default, ``--compile FILE.yaml``, ``--host URL`` (see
``entry``). ``stages`` holds the sub-pipelines both share, ``cluster`` the Kubernetes settings of every step.
"""
