"""The lifecycle pipeline's steps as plain functions, and their MLflow lineage.

``components/`` (Kubeflow components) call these and nothing else: ``data_steps`` (version, validate,
synthesize pairs), ``model_steps`` (train, evaluate), ``release_steps`` (register, promotion gate, batch
upscaling). ``lineage`` keeps one MLflow parent run per pipeline run and one child run per step; ``local`` lays
out the embedded defaults of a local run. Import the sub-modules directly; nothing heavy is imported here.
"""
