"""Cloud training: run a config as a GPU training job on the cloud chosen at bake time, then import the result.

    DRY_RUN=1 make train-cloud CONFIG=configs/gpu.yaml   # print the cost check and every call, create nothing
    make train-cloud CONFIG=configs/gpu.yaml             # stage, upload, start the job, follow it, fetch it

Modules: `job` (the job's description, price table, cost cap, command), `staging` (what the job uploads),
`entrypoint` (runs inside the job: train, evaluate, write the results), `importer` (a finished job's results
into outputs/, reports/ and MLflow), `cli` (the `cloud` commands) and one module per target (aws, gcp, azure or
hf_jobs) with the same functions: settings, job_calls, submit, status, download, cancel.
"""
